//! IFEval (Zhou et al. 2023): 25 kinds of verifiable instruction ("answer in fewer than 50
//! words", "no commas", "wrap the answer in JSON", …), each checked by a rule on the response.
//!
//! Every check follows the reference implementation (google-research `instruction_following_eval`,
//! which lm-evaluation-harness's `ifeval` task copies): the same regular expressions, the same
//! splitting, the same comparisons. The text measures and where they differ are in
//! [`super::ifeval_text`]. The scores, with lm-evaluation-harness's names:
//! - **strict**: an instruction is followed when the response is not blank and passes the check;
//! - **loose**: when any of eight variants passes: the response; without its first line, its last
//!   line, or both; and each of those four with every `*` removed;
//! - **prompt level**: the share of prompts whose every instruction is followed;
//! - **instruction level**: the share of all instructions followed.
//!
//! Beyond the text measures: `json_format` parses with serde_json, which refuses what Python's
//! `json.loads` also takes (`NaN`, `Infinity`, numbers past f64's range, nesting past 128).
//!
//! A row's `kwargs` are read as the reference reads them: a key whose value is null, 0, "" or []
//! is absent (HF's parquet gives every row every key, mostly null). Where the reference would then
//! draw a random value (a missing threshold), prefer refuses the row instead, naming the key, so a
//! score never depends on chance.

use super::ifeval_text::{
    count_sentences, count_words, detect_language, is_lower, is_upper, word_tokens,
};
use anyhow::{anyhow, bail, Result};
use regex::Regex;
use serde_json::{Map, Value};

/// "less than" (count < N) or "at least" (count ≥ N), the reference's two relations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    LessThan,
    AtLeast,
}

impl Relation {
    fn holds(self, count: usize, threshold: usize) -> bool {
        match self {
            Relation::LessThan => count < threshold,
            Relation::AtLeast => count >= threshold,
        }
    }
}

/// One instruction with its arguments: what `check` tests.
#[derive(Clone, Debug)]
pub enum Instruction {
    /// keywords:existence: every keyword (a regular expression, case-insensitive) appears.
    KeywordsExist(Vec<Regex>),
    /// keywords:frequency: the keyword's (case-insensitive) matches, against a threshold.
    KeywordFrequency(Regex, Relation, usize),
    /// keywords:forbidden_words: none of the words appears as a whole word (case-insensitive).
    ForbiddenWords(Vec<Regex>),
    /// keywords:letter_frequency: occurrences of a letter, either case.
    LetterFrequency(char, Relation, usize),
    /// language:response_language: the detected language (ISO 639-1).
    ResponseLanguage(String),
    /// length_constraints:number_sentences.
    NumberSentences(Relation, usize),
    /// length_constraints:number_paragraphs: exactly N paragraphs divided by `***`.
    NumberParagraphs(usize),
    /// length_constraints:number_words.
    NumberWords(Relation, usize),
    /// length_constraints:nth_paragraph_first_word: N paragraphs divided by blank lines, paragraph
    /// `nth` (from 1) starting with the word.
    NthParagraphFirstWord {
        paragraphs: usize,
        nth: usize,
        first_word: String,
    },
    /// detectable_content:number_placeholders: at least N `[...]`.
    NumberPlaceholders(usize),
    /// detectable_content:postscript: a line starting with the marker (P.S., P.P.S, …).
    Postscript(String),
    /// detectable_format:number_bullet_lists: exactly N lines starting `*` or `-`.
    NumberBulletLists(usize),
    /// detectable_format:constrained_response: "My answer is yes./no./maybe.".
    ConstrainedResponse,
    /// detectable_format:number_highlighted_sections: at least N `*...*` or `**...**`.
    NumberHighlightedSections(usize),
    /// detectable_format:multiple_sections: at least N sections marked "{splitter} {number}".
    MultipleSections(Regex, usize),
    /// detectable_format:json_format: the whole response (markdown fences allowed) is JSON.
    JsonFormat,
    /// detectable_format:title: a `<<title>>`.
    Title,
    /// combination:two_responses: two different responses divided by `******`.
    TwoResponses,
    /// combination:repeat_prompt: the response starts with the request, word for word.
    RepeatPrompt(String),
    /// startend:end_checker: the response ends with the phrase.
    EndChecker(String),
    /// change_case:capital_word_frequency: words in capitals, against a threshold.
    CapitalWordFrequency(Relation, usize),
    /// change_case:english_capital: English, in capitals.
    EnglishCapital,
    /// change_case:english_lowercase: English, in lower case.
    EnglishLowercase,
    /// punctuation:no_comma.
    NoComma,
    /// startend:quotation: wrapped in double quotes.
    Quotation,
}

/// The 25 instruction ids of IFEval, as its rows name them.
pub const INSTRUCTION_IDS: [&str; 25] = [
    "keywords:existence",
    "keywords:frequency",
    "keywords:forbidden_words",
    "keywords:letter_frequency",
    "language:response_language",
    "length_constraints:number_sentences",
    "length_constraints:number_paragraphs",
    "length_constraints:number_words",
    "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders",
    "detectable_content:postscript",
    "detectable_format:number_bullet_lists",
    "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections",
    "detectable_format:json_format",
    "detectable_format:title",
    "combination:two_responses",
    "combination:repeat_prompt",
    "startend:end_checker",
    "change_case:capital_word_frequency",
    "change_case:english_capital",
    "change_case:english_lowercase",
    "punctuation:no_comma",
    "startend:quotation",
];

/// The reference's arguments after dropping "falsy" values (null, 0, "", [], false).
struct Kwargs<'a> {
    id: &'a str,
    map: Map<String, Value>,
}

impl<'a> Kwargs<'a> {
    fn new(id: &'a str, kwargs: &Map<String, Value>) -> Kwargs<'a> {
        let truthy = |v: &Value| match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        };
        let map = kwargs
            .iter()
            .filter(|(_, v)| truthy(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Kwargs { id, map }
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.map.get(key).ok_or_else(|| {
            anyhow!(
                "{} needs \"{key}\" in its kwargs (the reference would draw it at random)",
                self.id
            )
        })
    }

    fn count(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        v.as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f > 0.0)
                    .map(|f| f as u64)
            })
            .map(|n| n as usize)
            .ok_or_else(|| anyhow!("{}: \"{key}\" is {v}, not a positive whole number", self.id))
    }

    fn text(&self, key: &str) -> Result<String> {
        match self.get(key)? {
            Value::String(s) => Ok(s.clone()),
            v => bail!("{}: \"{key}\" is {v}, not a string", self.id),
        }
    }

    fn texts(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key)? {
            Value::Array(a) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| anyhow!("{}: \"{key}\" holds {v}, not a string", self.id))
                })
                .collect(),
            v => bail!("{}: \"{key}\" is {v}, not a list of strings", self.id),
        }
    }

    fn relation(&self, key: &str) -> Result<Relation> {
        match self.text(key)?.as_str() {
            "less than" => Ok(Relation::LessThan),
            "at least" => Ok(Relation::AtLeast),
            other => bail!(
                "{}: \"{key}\" is \"{other}\"; the relation is \"less than\" or \"at least\"",
                self.id
            ),
        }
    }
}

/// A pattern as the reference builds it: `before` + the row's `value` + `after`, with the value
/// taken as a regular expression (Python's `re` syntax read as Rust's, the same for the words
/// IFEval uses). A value that does not compile as one (Python-only syntax such as lookbehind, or
/// an unbalanced bracket) is matched as literal text, inside the same pattern.
fn pattern(before: &str, value: &str, after: &str, case_insensitive: bool) -> Regex {
    let flag = if case_insensitive { "(?i)" } else { "" };
    Regex::new(&format!("{flag}{before}{value}{after}"))
        .or_else(|_| Regex::new(&format!("{flag}{before}{}{after}", regex::escape(value))))
        .expect("an escaped value compiles")
}

impl Instruction {
    /// The instruction `id` with its row's `kwargs`.
    pub fn parse(id: &str, kwargs: &Map<String, Value>) -> Result<Instruction> {
        use Instruction::*;
        let k = Kwargs::new(id, kwargs);
        Ok(match id {
            "keywords:existence" => KeywordsExist(
                k.texts("keywords")?
                    .iter()
                    .map(|w| pattern("", w, "", true))
                    .collect(),
            ),
            "keywords:frequency" => KeywordFrequency(
                pattern("", k.text("keyword")?.trim(), "", true),
                k.relation("relation")?,
                k.count("frequency")?,
            ),
            "keywords:forbidden_words" => ForbiddenWords(
                k.texts("forbidden_words")?
                    .iter()
                    .map(|w| pattern(r"\b", w, r"\b", true))
                    .collect(),
            ),
            "keywords:letter_frequency" => {
                // The reference checks the length before it strips: " a" is not one letter.
                let letter = k.text("letter")?;
                let mut chars = letter.chars();
                let (Some(c), None) = (chars.next(), chars.next()) else {
                    bail!("{id}: \"letter\" is \"{letter}\", not one letter");
                };
                if !c.is_ascii_alphabetic() {
                    bail!("{id}: \"letter\" is \"{letter}\", not a letter a-z");
                }
                LetterFrequency(
                    c.to_ascii_lowercase(),
                    k.relation("let_relation")?,
                    k.count("let_frequency")?,
                )
            }
            "language:response_language" => ResponseLanguage(k.text("language")?),
            "length_constraints:number_sentences" => {
                NumberSentences(k.relation("relation")?, k.count("num_sentences")?)
            }
            "length_constraints:number_paragraphs" => NumberParagraphs(k.count("num_paragraphs")?),
            "length_constraints:number_words" => {
                NumberWords(k.relation("relation")?, k.count("num_words")?)
            }
            "length_constraints:nth_paragraph_first_word" => {
                let paragraphs = k.count("num_paragraphs")?;
                let nth = k.count("nth_paragraph")?;
                if nth > paragraphs {
                    bail!("{id}: \"nth_paragraph\" {nth} is past \"num_paragraphs\" {paragraphs}");
                }
                NthParagraphFirstWord {
                    paragraphs,
                    nth,
                    first_word: k.text("first_word")?.to_lowercase(),
                }
            }
            "detectable_content:number_placeholders" => {
                NumberPlaceholders(k.count("num_placeholders")?)
            }
            "detectable_content:postscript" => {
                Postscript(k.text("postscript_marker")?.trim().to_string())
            }
            "detectable_format:number_bullet_lists" => NumberBulletLists(k.count("num_bullets")?),
            "detectable_format:constrained_response" => ConstrainedResponse,
            "detectable_format:number_highlighted_sections" => {
                NumberHighlightedSections(k.count("num_highlights")?)
            }
            "detectable_format:multiple_sections" => {
                let splitter = k.text("section_spliter")?;
                MultipleSections(
                    pattern(r"\s?", splitter.trim(), r"\s?\d+\s?", false),
                    k.count("num_sections")?,
                )
            }
            "detectable_format:json_format" => JsonFormat,
            "detectable_format:title" => Title,
            "combination:two_responses" => TwoResponses,
            "combination:repeat_prompt" => RepeatPrompt(k.text("prompt_to_repeat")?),
            "startend:end_checker" => EndChecker(k.text("end_phrase")?.trim().to_string()),
            "change_case:capital_word_frequency" => CapitalWordFrequency(
                k.relation("capital_relation")?,
                k.count("capital_frequency")?,
            ),
            "change_case:english_capital" => EnglishCapital,
            "change_case:english_lowercase" => EnglishLowercase,
            "punctuation:no_comma" => NoComma,
            "startend:quotation" => Quotation,
            other => bail!(
                "unknown instruction \"{other}\" (IFEval's are: {})",
                INSTRUCTION_IDS.join(", ")
            ),
        })
    }

    /// The reference's `check_following`: whether `response` follows this instruction.
    pub fn check(&self, response: &str) -> bool {
        use Instruction::*;
        let value = response;
        match self {
            KeywordsExist(words) => words.iter().all(|w| w.is_match(value)),
            KeywordFrequency(word, rel, n) => rel.holds(word.find_iter(value).count(), *n),
            ForbiddenWords(words) => !words.iter().any(|w| w.is_match(value)),
            LetterFrequency(letter, rel, n) => rel.holds(
                value.to_lowercase().chars().filter(|c| c == letter).count(),
                *n,
            ),
            // langdetect's failure (no letters to judge) counts as followed, as in the reference.
            ResponseLanguage(lang) => detect_language(value).is_none_or(|l| l == lang),
            NumberSentences(rel, n) => rel.holds(count_sentences(value), *n),
            NumberParagraphs(n) => number_paragraphs(value) == Some(*n),
            NumberWords(rel, n) => rel.holds(count_words(value), *n),
            NthParagraphFirstWord {
                paragraphs,
                nth,
                first_word,
            } => nth_paragraph_first_word(value, *paragraphs, *nth, first_word),
            NumberPlaceholders(n) => regex_count(r"\[.*?\]", value) >= *n,
            Postscript(marker) => {
                let lower = value.to_lowercase();
                let p = match marker.as_str() {
                    "P.P.S" => pattern(r"(?m)\s*p\.\s?p\.\s?s.*$", "", "", false),
                    "P.S." => pattern(r"(?m)\s*p\.\s?s\..*$", "", "", false),
                    m => pattern(r"(?m)\s*", &m.to_lowercase(), r".*$", false),
                };
                p.is_match(&lower)
            }
            NumberBulletLists(n) => {
                regex_count(r"(?m)^\s*\*[^\*].*$", value) + regex_count(r"(?m)^\s*-.*$", value)
                    == *n
            }
            ConstrainedResponse => {
                let v = value.trim();
                [
                    "My answer is yes.",
                    "My answer is no.",
                    "My answer is maybe.",
                ]
                .iter()
                .any(|o| v.contains(o))
            }
            NumberHighlightedSections(n) => highlighted_sections(value) >= *n,
            MultipleSections(splitter, n) => splitter.find_iter(value).count() >= *n,
            JsonFormat => is_json(value),
            Title => Regex::new(r"<<[^\n]+>>")
                .expect("valid regex")
                .find_iter(value)
                .any(|t| {
                    !t.as_str()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .trim()
                        .is_empty()
                }),
            TwoResponses => two_responses(value),
            RepeatPrompt(prompt) => value
                .trim()
                .to_lowercase()
                .starts_with(&prompt.trim().to_lowercase()),
            EndChecker(phrase) => value
                .trim()
                .trim_matches('"')
                .to_lowercase()
                .ends_with(&phrase.trim().to_lowercase()),
            CapitalWordFrequency(rel, n) => rel.holds(
                word_tokens(value).iter().filter(|w| is_upper(w)).count(),
                *n,
            ),
            EnglishCapital => is_upper(value) && detect_language(value).is_none_or(|l| l == "en"),
            EnglishLowercase => is_lower(value) && detect_language(value).is_none_or(|l| l == "en"),
            NoComma => !value.contains(','),
            Quotation => {
                let v = value.trim();
                v.chars().count() > 1 && v.starts_with('"') && v.ends_with('"')
            }
        }
    }
}

fn regex_count(p: &str, text: &str) -> usize {
    Regex::new(p).expect("valid regex").find_iter(text).count()
}

/// Paragraphs divided by `***`; None when an inner one is blank (the reference fails it).
fn number_paragraphs(value: &str) -> Option<usize> {
    let parts: Vec<&str> = Regex::new(r"\s?\*\*\*\s?")
        .expect("valid regex")
        .split(value)
        .collect();
    let mut n = parts.len();
    for (i, p) in parts.iter().enumerate() {
        if p.trim().is_empty() {
            if i == 0 || i == parts.len() - 1 {
                n -= 1;
            } else {
                return None;
            }
        }
    }
    Some(n)
}

fn nth_paragraph_first_word(value: &str, want: usize, nth: usize, first_word: &str) -> bool {
    let parts: Vec<&str> = value.split("\n\n").collect();
    let n = parts.iter().filter(|p| !p.trim().is_empty()).count();
    // As the reference: the nth piece of the raw split, checked against the count of non-blank
    // ones.
    if nth > n {
        return false;
    }
    let paragraph = parts[nth - 1].trim();
    let Some(word) = paragraph.split_whitespace().next() else {
        return false;
    };
    let word = word.trim_start_matches('\'').trim_start_matches('"');
    let first: String = word
        .chars()
        .take_while(|c| !matches!(c, '.' | ',' | '?' | '!' | '\'' | '"'))
        .flat_map(char::to_lowercase)
        .collect();
    n == want && first == first_word
}

fn highlighted_sections(value: &str) -> usize {
    let single = Regex::new(r"\*[^\n\*]*\*").expect("valid regex");
    let double = Regex::new(r"\*\*[^\n\*]*\*\*").expect("valid regex");
    let a = single
        .find_iter(value)
        .filter(|h| !h.as_str().trim_matches('*').trim().is_empty())
        .count();
    let b = double
        .find_iter(value)
        .filter(|h| {
            let s = h.as_str();
            !s[2..s.len() - 2].trim().is_empty()
        })
        .count();
    a + b
}

fn is_json(value: &str) -> bool {
    let mut v = value.trim();
    for fence in ["```json", "```Json", "```JSON", "```"] {
        v = v.strip_prefix(fence).unwrap_or(v);
    }
    let v = v.strip_suffix("```").unwrap_or(v).trim();
    serde_json::from_str::<Value>(v).is_ok()
}

fn two_responses(value: &str) -> bool {
    let parts: Vec<&str> = value.split("******").collect();
    let mut valid = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if p.trim().is_empty() {
            if i != 0 && i != parts.len() - 1 {
                return false;
            }
        } else {
            valid.push(p.trim());
        }
    }
    valid.len() == 2 && valid[0] != valid[1]
}

/// One IFEval row's instructions, parsed.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub ids: Vec<String>,
    pub instructions: Vec<Instruction>,
}

impl Prompt {
    /// From a row's `instruction_id_list` and `kwargs` (one object per instruction).
    pub fn parse(ids: &[String], kwargs: &[Map<String, Value>]) -> Result<Prompt> {
        if ids.is_empty() {
            bail!("\"instruction_id_list\" is empty");
        }
        if kwargs.len() != ids.len() {
            bail!(
                "{} instructions but {} kwargs objects (one per instruction)",
                ids.len(),
                kwargs.len()
            );
        }
        let instructions = ids
            .iter()
            .zip(kwargs)
            .map(|(id, kw)| Instruction::parse(id, kw))
            .collect::<Result<_>>()?;
        Ok(Prompt {
            ids: ids.to_vec(),
            instructions,
        })
    }
}

/// One IFEval row as google/IFEval stores it: its prompt text and its parsed instructions, from
/// "prompt", "instruction_id_list" and "kwargs" (one object per instruction). Errors say which
/// field is wrong; the caller adds the file and line.
pub fn read_row(row: &Map<String, Value>) -> Result<(String, Prompt)> {
    let needs = "ifeval rows have \"prompt\", \"instruction_id_list\" and \"kwargs\"";
    let prompt = match row.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => bail!("\"prompt\" is not a string"),
        None => bail!("no \"prompt\" ({needs})"),
    };
    let ids: Vec<String> = row
        .get("instruction_id_list")
        .ok_or_else(|| anyhow!("no \"instruction_id_list\" ({needs})"))
        .and_then(|v| {
            serde_json::from_value(v.clone())
                .map_err(|_| anyhow!("\"instruction_id_list\" must be a list of strings"))
        })?;
    let kwargs: Vec<Map<String, Value>> = row
        .get("kwargs")
        .ok_or_else(|| anyhow!("no \"kwargs\" ({needs})"))
        .and_then(|v| {
            serde_json::from_value(v.clone())
                .map_err(|_| anyhow!("\"kwargs\" must be a list of objects, one per instruction"))
        })?;
    Ok((prompt, Prompt::parse(&ids, &kwargs)?))
}

/// Whether each instruction is followed, strictly: the response is not blank and passes.
pub fn follows_strict(prompt: &Prompt, response: &str) -> Vec<bool> {
    prompt
        .instructions
        .iter()
        .map(|i| !response.trim().is_empty() && i.check(response))
        .collect()
}

/// The reference's eight loose variants of a response: as it is, without its first line, its
/// last line, or both, and each of those with every `*` removed.
pub fn loose_variants(response: &str) -> [String; 8] {
    let lines: Vec<&str> = response.split('\n').collect();
    let join = |a: usize, b: usize| {
        if a >= b {
            String::new()
        } else {
            lines[a..b].join("\n").trim().to_string()
        }
    };
    let n = lines.len();
    let first = join(1, n);
    let last = join(0, n.saturating_sub(1));
    let both = join(1, n.saturating_sub(1));
    let bare = |s: &str| s.replace('*', "");
    [
        response.to_string(),
        bare(response),
        first.clone(),
        last.clone(),
        both.clone(),
        bare(&first),
        bare(&last),
        bare(&both),
    ]
}

/// Whether each instruction is followed loosely: by any of the eight variants.
pub fn follows_loose(prompt: &Prompt, response: &str) -> Vec<bool> {
    let variants = loose_variants(response);
    prompt
        .instructions
        .iter()
        .map(|i| variants.iter().any(|r| !r.trim().is_empty() && i.check(r)))
        .collect()
}

/// One response's verdicts, strict and loose, per instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub strict: Vec<bool>,
    pub loose: Vec<bool>,
}

pub fn judge(prompt: &Prompt, response: &str) -> Verdict {
    Verdict {
        strict: follows_strict(prompt, response),
        loose: follows_loose(prompt, response),
    }
}

/// The four figures over a set of responses, lm-evaluation-harness's names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub prompt_level_strict_acc: f64,
    pub inst_level_strict_acc: f64,
    pub prompt_level_loose_acc: f64,
    pub inst_level_loose_acc: f64,
}

pub fn scores(verdicts: &[Verdict]) -> Scores {
    let prompt_level = |f: fn(&Verdict) -> &Vec<bool>| {
        verdicts.iter().filter(|v| f(v).iter().all(|&b| b)).count() as f64 / verdicts.len() as f64
    };
    let inst_level = |f: fn(&Verdict) -> &Vec<bool>| {
        let all: Vec<bool> = verdicts.iter().flat_map(|v| f(v).clone()).collect();
        all.iter().filter(|&&b| b).count() as f64 / all.len() as f64
    };
    Scores {
        prompt_level_strict_acc: prompt_level(|v| &v.strict),
        inst_level_strict_acc: inst_level(|v| &v.strict),
        prompt_level_loose_acc: prompt_level(|v| &v.loose),
        inst_level_loose_acc: inst_level(|v| &v.loose),
    }
}

#[cfg(test)]
#[path = "ifeval_tests.rs"]
mod tests;
