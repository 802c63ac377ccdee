//! The text measures IFEval's checks count with: sentences, words, all-capital words, case and
//! language, each as the reference implementation (google-research `instruction_following_eval`,
//! copied into lm-evaluation-harness as `tasks/ifeval`) measures it, or as close as Rust allows.
//!
//! Where prefer differs from the reference:
//! - **Sentences** are counted with the reference's own rule-based splitter
//!   (`split_into_sentences`, abbreviations, initials, decimals, acronyms, websites), not with
//!   NLTK's trained Punkt model, which the reference uses to count. They agree on ordinary prose;
//!   Punkt can differ on abbreviations it learned (e.g. "etc.", "vs.").
//! - **Words for capital-word frequency** are NLTK `word_tokenize`'s tokens approximated: split at
//!   whitespace, surrounding punctuation removed, contractions split as the Treebank tokenizer
//!   splits them ("DON'T" → "DO" "N'T", "IT'S" → "IT" "'S"), hyphenated words kept whole.
//! - **Language** is detected with the `whatlang` crate, not Python's `langdetect`: both are
//!   character n-gram models, but they can disagree on short or mixed texts. whatlang knows no
//!   Swahili; a Swahili instruction can only be followed when detection fails (which, as in the
//!   reference, counts as followed).

use regex::{Captures, Regex};
use std::sync::LazyLock;

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("valid regex")
}

const ALPHA: &str = "([A-Za-z])";
const PREFIXES: &str = "(Mr|St|Mrs|Ms|Dr)[.]";
const SUFFIXES: &str = "(Inc|Ltd|Jr|Sr|Co)";
const STARTERS: &str = r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|This\s|Wherever)";
const ACRONYMS: &str = "([A-Z][.][A-Z][.](?:[A-Z][.])?)";
const WEBSITES: &str = "[.](com|net|org|io|gov|edu|me)";
const DIGITS: &str = "([0-9])";

struct SentenceRules {
    prefixes: Regex,
    websites: Regex,
    decimals: Regex,
    multiple_dots: Regex,
    initial: Regex,
    acronym_then_starter: Regex,
    three_letter_dots: Regex,
    two_letter_dots: Regex,
    suffix_then_starter: Regex,
    suffix: Regex,
    letter_dot: Regex,
}

static RULES: LazyLock<SentenceRules> = LazyLock::new(|| SentenceRules {
    prefixes: re(PREFIXES),
    websites: re(WEBSITES),
    decimals: re(&format!("{DIGITS}[.]{DIGITS}")),
    multiple_dots: re(r"\.{2,}"),
    initial: re(&format!(r"\s{ALPHA}[.] ")),
    acronym_then_starter: re(&format!("{ACRONYMS} {STARTERS}")),
    three_letter_dots: re(&format!("{ALPHA}[.]{ALPHA}[.]{ALPHA}[.]")),
    two_letter_dots: re(&format!("{ALPHA}[.]{ALPHA}[.]")),
    suffix_then_starter: re(&format!(" {SUFFIXES}[.] {STARTERS}")),
    suffix: re(&format!(" {SUFFIXES}[.]")),
    letter_dot: re(&format!(" {ALPHA}[.]")),
});

/// The reference's `split_into_sentences`: full stops that do not end a sentence (titles,
/// initials, decimals, acronyms, websites, ellipses' inner dots) are protected, then the text is
/// cut after every `.`, `?` and `!`.
pub fn split_into_sentences(text: &str) -> Vec<String> {
    let r = &*RULES;
    let mut t = format!(" {text}  ").replace('\n', " ");
    t = r.prefixes.replace_all(&t, "${1}<prd>").into_owned();
    t = r.websites.replace_all(&t, "<prd>${1}").into_owned();
    t = r.decimals.replace_all(&t, "${1}<prd>${2}").into_owned();
    t = r
        .multiple_dots
        .replace_all(&t, |c: &Captures| {
            format!("{}<stop>", "<prd>".repeat(c[0].len()))
        })
        .into_owned();
    if t.contains("Ph.D") {
        t = t.replace("Ph.D.", "Ph<prd>D<prd>");
    }
    t = r.initial.replace_all(&t, " ${1}<prd> ").into_owned();
    t = r
        .acronym_then_starter
        .replace_all(&t, "${1}<stop> ${2}")
        .into_owned();
    t = r
        .three_letter_dots
        .replace_all(&t, "${1}<prd>${2}<prd>${3}<prd>")
        .into_owned();
    t = r
        .two_letter_dots
        .replace_all(&t, "${1}<prd>${2}<prd>")
        .into_owned();
    t = r
        .suffix_then_starter
        .replace_all(&t, " ${1}<stop> ${2}")
        .into_owned();
    t = r.suffix.replace_all(&t, " ${1}<prd>").into_owned();
    t = r.letter_dot.replace_all(&t, " ${1}<prd>").into_owned();
    if t.contains('\u{201d}') {
        t = t.replace(".\u{201d}", "\u{201d}.");
    }
    if t.contains('"') {
        t = t.replace(".\"", "\".");
    }
    if t.contains('!') {
        t = t.replace("!\"", "\"!");
    }
    if t.contains('?') {
        t = t.replace("?\"", "\"?");
    }
    t = t
        .replace('.', ".<stop>")
        .replace('?', "?<stop>")
        .replace('!', "!<stop>")
        .replace("<prd>", ".");
    let mut sentences: Vec<String> = t.split("<stop>").map(|s| s.trim().to_string()).collect();
    if sentences.last().is_some_and(String::is_empty) {
        sentences.pop();
    }
    sentences
}

/// How many sentences `text` has (see the module's note on Punkt).
pub fn count_sentences(text: &str) -> usize {
    split_into_sentences(text)
        .iter()
        .filter(|s| !s.is_empty())
        .count()
}

/// Python's `\w` (what NLTK's `RegexpTokenizer(r"\w+")` matches): letters, numbers and "_".
/// Rust's `\w` also takes combining marks, which would join the parts of a Devanagari word
/// that Python splits.
static WORD: LazyLock<Regex> = LazyLock::new(|| re(r"[\p{L}\p{N}_]+"));

/// The reference's `count_words`: runs of word characters, as Python's `\w+` finds them.
pub fn count_words(text: &str) -> usize {
    WORD.find_iter(text).count()
}

/// Python's `str.isupper`: at least one cased character, and none lower-case.
pub fn is_upper(s: &str) -> bool {
    s.chars().any(char::is_uppercase) && !s.chars().any(char::is_lowercase)
}

/// Python's `str.islower`: at least one cased character, and none upper-case.
pub fn is_lower(s: &str) -> bool {
    s.chars().any(char::is_lowercase) && !s.chars().any(char::is_uppercase)
}

/// Word tokens as NLTK's `word_tokenize` would give them, near enough to count all-capital words
/// (see the module's note).
pub fn word_tokens(text: &str) -> Vec<String> {
    const SUFFIXES: [&str; 7] = ["n't", "'s", "'m", "'d", "'ll", "'re", "'ve"];
    let mut out = Vec::new();
    for raw in text.split_whitespace() {
        let word = raw.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-');
        let word = word.trim_matches(|c: char| c == '\'' || c == '-');
        if word.is_empty() {
            continue;
        }
        let lower = word.to_lowercase();
        match SUFFIXES
            .iter()
            .find(|s| lower.ends_with(*s) && lower.len() > s.len())
        {
            Some(s) => {
                let cut = word.len() - s.len();
                out.push(word[..cut].to_string());
                out.push(word[cut..].to_string());
            }
            None => out.push(word.to_string()),
        }
    }
    out
}

/// The ISO 639-1 code of `text`'s language, as the reference's `langdetect.detect` returns it;
/// None when no language can be told (the reference counts that as followed).
pub fn detect_language(text: &str) -> Option<&'static str> {
    use whatlang::Lang::*;
    let info = whatlang::detect(text)?;
    Some(match info.lang() {
        Eng => "en",
        Spa => "es",
        Por => "pt",
        Ara => "ar",
        Hin => "hi",
        Fra => "fr",
        Rus => "ru",
        Deu => "de",
        Jpn => "ja",
        Ita => "it",
        Ben => "bn",
        Ukr => "uk",
        Tha => "th",
        Urd => "ur",
        Tam => "ta",
        Tel => "te",
        Bul => "bg",
        Kor => "ko",
        Pol => "pl",
        Heb => "he",
        Pes => "fa",
        Vie => "vi",
        Nep => "ne",
        Kan => "kn",
        Mar => "mr",
        Guj => "gu",
        Pan => "pa",
        Mal => "ml",
        Fin => "fi",
        Cmn => "zh-cn",
        Nld => "nl",
        Tur => "tr",
        Swe => "sv",
        Dan => "da",
        Nob => "no",
        Ces => "cs",
        Ron => "ro",
        Hun => "hu",
        Ell => "el",
        Ind => "id",
        other => other.code(),
    })
}
