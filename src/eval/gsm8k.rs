//! GSM8K: the few-shot chain-of-thought prompt, answer extraction and scoring.
//!
//! - **Prompt** as the Tulu / open-instruct evaluation builds it (eval/gsm/run_eval.py): the
//!   eight chain-of-thought exemplars of Wei et al. 2022 (Table 20), each "Question: …\nAnswer: …
//!   So the answer is N.", after "Answer the following questions.\n\n", joined by blank lines,
//!   then "Question: {question}\nAnswer:".
//! - **Extraction** as lm-evaluation-harness's `flexible-extract` filter: the last match of
//!   `(-?[$0-9.,]{2,})|(-?[0-9]+)` in the completion (its first non-empty group, stripped), or
//!   "[invalid]" when there is none.
//! - **Scoring** as its `exact_match` with the gsm8k task's settings: on both the extracted answer
//!   and the gold (what follows "#### " in GSM8K's `answer`), delete every ",", "$", everything up
//!   to a "#### ", and a trailing "."; lower-case; then compare the strings. So "$1,234." matches
//!   1234, and "5.0" does not match 5, as in the harness. The gold is the text after the last
//!   "####", trimmed, as the harness's gsm8k-cot task reads it; its plain gsm8k task keeps a
//!   trailing space or newline after the number (and so never matches such a gold), which
//!   GSM8K's own rows never have. tests/fixtures/gsm8k holds 50 answers whose verdicts equal
//!   lm-evaluation-harness 0.4.13's (tests/reference/check_gsm8k.py).

use anyhow::{bail, Result};
use regex::Regex;
use std::sync::LazyLock;

/// One few-shot exemplar: a question and its chain-of-thought answer, ending "So the answer is N.".
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct Exemplar {
    pub question: String,
    pub answer: String,
}

/// The eight exemplars of the chain-of-thought paper (Wei et al. 2022, Table 20), as the Tulu
/// evaluation has them.
pub const EXEMPLARS: [(&str, &str); 8] = [
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. So the answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. So the answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. So the answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. So the answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. So the answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. So the answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. So the answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. So the answer is 8.",
    ),
];

/// The built-in exemplars.
pub fn default_exemplars() -> Vec<Exemplar> {
    EXEMPLARS
        .iter()
        .map(|&(q, a)| Exemplar {
            question: q.into(),
            answer: a.into(),
        })
        .collect()
}

/// What comes before each question: the instruction and the first `shots` exemplars.
pub fn fewshot_prefix(exemplars: &[Exemplar], shots: usize) -> String {
    if shots == 0 {
        return "Answer the following question.\n\n".into();
    }
    let demos: Vec<String> = exemplars
        .iter()
        .take(shots)
        .map(|e| format!("Question: {}\nAnswer: {}", e.question, e.answer))
        .collect();
    format!(
        "Answer the following questions.\n\n{}\n\n",
        demos.join("\n\n")
    )
}

/// The plain-text prompt of one question.
pub fn prompt(prefix: &str, question: &str) -> String {
    format!("{prefix}Question: {}\nAnswer:", question.trim())
}

/// The user turn of one question under a chat template (open-instruct's chat format): the
/// rendered turn is followed by "Answer:" (after a space unless it ends in whitespace).
pub fn chat_turn(prefix: &str, question: &str) -> String {
    format!("{prefix}Question: {}", question.trim())
}

static FLEXIBLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").expect("valid regex"));
static UP_TO_HASHES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s).*#### ").expect("valid regex"));

/// lm-evaluation-harness's flexible-extract: the last number-like run of the completion, or
/// "[invalid]" where there is none.
pub fn extract(completion: &str) -> String {
    FLEXIBLE
        .captures_iter(completion)
        .last()
        .and_then(|c| {
            c.iter()
                .skip(1)
                .flatten()
                .map(|m| m.as_str())
                .find(|s| !s.is_empty())
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "[invalid]".into())
}

/// The harness's exact_match normalisation for gsm8k: its `regexes_to_ignore` (",", "\$",
/// "(?s).*#### ", "\.$"), applied in that order, then lower case.
pub fn normalise(s: &str) -> String {
    let s = s.replace([',', '$'], "");
    let s = UP_TO_HASHES.replace_all(&s, "");
    let s = s.strip_suffix('.').unwrap_or(&s);
    s.to_lowercase()
}

/// The gold answer of a GSM8K row: what follows "####" in its `answer`, normalised.
pub fn gold(answer: &str) -> Result<String> {
    let Some((_, tail)) = answer.rsplit_once("####") else {
        bail!("the answer has no \"#### N\" final answer: {answer:?}");
    };
    let g = normalise(tail.trim());
    if g.is_empty() {
        bail!("the answer's \"####\" is followed by nothing: {answer:?}");
    }
    Ok(g)
}

/// Whether a completion's extracted answer equals the normalised gold.
pub fn is_correct(completion: &str, gold: &str) -> bool {
    normalise(&extract(completion)) == gold
}

/// Majority vote over sampled completions: the most frequent extracted (normalised) answer, the
/// earliest among equally frequent ones; "[invalid]" votes count like any other answer.
pub fn majority(completions: &[String]) -> String {
    let answers: Vec<String> = completions.iter().map(|c| normalise(&extract(c))).collect();
    let mut best: Option<(&String, usize)> = None;
    for a in &answers {
        let n = answers.iter().filter(|b| *b == a).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((a, n));
        }
    }
    best.map(|(a, _)| a.clone()).unwrap_or_default()
}

/// An accuracy's standard error (as lm-evaluation-harness reports it: the sample standard
/// deviation over √n) and its 95% Wilson score interval.
pub fn interval(correct: usize, n: usize) -> (f64, [f64; 2]) {
    if n == 0 {
        return (f64::NAN, [f64::NAN, f64::NAN]);
    }
    let (k, n) = (correct as f64, n as f64);
    let p = k / n;
    let stderr = if n > 1.0 {
        (p * (1.0 - p) * n / (n - 1.0)).sqrt() / n.sqrt()
    } else {
        f64::NAN
    };
    let z = 1.959_963_984_540_054_f64;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    (stderr, [(centre - half).max(0.0), (centre + half).min(1.0)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Final answers in many shapes, each with the answer the harness's flexible-extract +
    /// exact_match takes from it (gold 1234 unless said).
    #[test]
    fn extraction_handles_the_formats_models_write() {
        let cases: [(&str, &str); 34] = [
            ("So the answer is 1234.", "1234"),
            ("The answer is 1234", "1234"),
            ("The answer is $1,234.", "1234"),
            ("#### 1234", "1234"),
            ("1 + 2 = 3. So the answer is 1,234.", "1234"),
            ("She pays $1,234.00 in all.", "1234.00"),
            ("Answer: 1234\n", "1234"),
            ("The total is 12 + 34 = 46, then 1234", "1234"),
            ("It is -7.", "-7"),
            ("It is -7 degrees", "-7"),
            ("-12", "-12"),
            ("The answer is 0.5.", "0.5"),
            ("The answer is .5", ".5"),
            ("The answer is 5", "5"),
            ("x = 3, y = 4. So the answer is 7", "7"),
            ("The answer is 7 apples.", "7"),
            ("I don't know.", "[invalid]"),
            ("", "[invalid]"),
            ("It costs $5", "5"),
            ("It costs $ 5", "5"),
            ("1,000,000 people", "1000000"),
            ("The answer is 42!", "42"),
            ("(42)", "42"),
            ("42%", "42"),
            ("Total: 3 * 4 = 12.\n\nQuestion: next", "12"),
            ("The answer is 10 dollars. Then 3", "3"),
            ("So the answer is 18.\n", "18"),
            ("The answer is: 18", "18"),
            ("**18**", "18"),
            ("\\boxed{18}", "18"),
            ("18.", "18"),
            ("It took 2.5 hours.", "2.5"),
            ("So 1/2 of 10 is 5.", "5"),
            ("from 1990 to 2000, 10 years", "10"),
        ];
        for (completion, want) in cases {
            assert_eq!(normalise(&extract(completion)), want, "{completion:?}");
        }
        let g = gold("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,234").unwrap();
        assert_eq!(g, "1234");
        assert!(is_correct("So the answer is $1,234.", &g));
        assert!(!is_correct("So the answer is 1234.5", &g));
        // As in the harness, strings are compared: 5.0 is not 5.
        assert!(!is_correct("The answer is 5.0", &gold("#### 5").unwrap()));
        assert!(is_correct("The answer is -3.", &gold("#### -3").unwrap()));
    }

    #[test]
    fn gold_needs_its_final_answer() {
        assert!(gold("no final answer here").is_err());
        assert!(gold("####   ").is_err());
        assert_eq!(gold("a #### b #### 72").unwrap(), "72");
    }

    #[test]
    fn the_prompt_is_open_instructs() {
        let ex = default_exemplars();
        let p = prompt(&fewshot_prefix(&ex, 8), "  How many?  ");
        assert!(p.starts_with("Answer the following questions.\n\nQuestion: There are 15 trees"));
        assert!(p.ends_with("So the answer is 8.\n\nQuestion: How many?\nAnswer:"));
        assert_eq!(p.matches("Question: ").count(), 9);
        assert_eq!(
            prompt(&fewshot_prefix(&ex, 0), "Q?"),
            "Answer the following question.\n\nQuestion: Q?\nAnswer:"
        );
        assert_eq!(fewshot_prefix(&ex, 2).matches("Question: ").count(), 2);
    }

    #[test]
    fn majority_vote_takes_the_most_common_answer_and_the_earliest_on_ties() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(majority(&c(&["is 3", "is 4", "is 4", "nothing"])), "4");
        assert_eq!(majority(&c(&["is 3", "is 4"])), "3");
        assert_eq!(majority(&c(&["none", "none", "is 4"])), "[invalid]");
    }

    #[test]
    fn the_interval_is_wilsons() {
        let (se, [lo, hi]) = interval(50, 100);
        assert!((se - (0.25f64 * 100.0 / 99.0).sqrt() / 10.0).abs() < 1e-12);
        // Wilson's 95% interval for 50/100: 0.4038 to 0.5962.
        assert!(
            (lo - 0.40383).abs() < 1e-4 && (hi - 0.59617).abs() < 1e-4,
            "{lo} {hi}"
        );
        let (_, [lo, hi]) = interval(0, 10);
        assert!(lo.abs() < 1e-12 && (hi - 0.27753).abs() < 1e-4, "{lo} {hi}");
    }
}
