//! Verifiable rewards: `math-answer` compares the last number in a completion with the prompt
//! line's answer, as GSM8K is graded.

/// Every number in `text`, in order: an optional minus, digits with thousands commas, an optional
/// decimal part ("1,234.5" → 1234.5).
pub fn numbers(text: &str) -> Vec<f64> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let negative = i > 0 && b[i - 1] == b'-';
            let mut s = String::new();
            while i < b.len()
                && (b[i].is_ascii_digit()
                    || (b[i] == b',' && i + 1 < b.len() && b[i + 1].is_ascii_digit())
                    || (b[i] == b'.'
                        && i + 1 < b.len()
                        && b[i + 1].is_ascii_digit()
                        && !s.contains('.')))
            {
                if b[i] != b',' {
                    s.push(b[i] as char);
                }
                i += 1;
            }
            if let Ok(v) = s.parse::<f64>() {
                out.push(if negative { -v } else { v });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The answer a prompt line gives: a number, or a string whose last number is the answer
/// (GSM8K's "... #### 72").
pub fn answer_of(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => numbers(s).last().copied(),
        _ => None,
    }
}

/// 1 when the completion's last number equals the answer, else 0.
pub fn math_answer(completion: &str, answer: f64) -> f32 {
    match numbers(completion).last() {
        Some(&x) if (x - answer).abs() <= 1e-6 * answer.abs().max(1.0) => 1.0,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_number_is_graded() {
        assert_eq!(numbers("a 1,234.5 b -7 c 3.x"), vec![1234.5, -7.0, 3.0]);
        assert_eq!(math_answer("so 3 + 4 = 7", 7.0), 1.0);
        assert_eq!(math_answer("7 apples, then 8", 7.0), 0.0);
        assert_eq!(math_answer("no number", 7.0), 0.0);
        assert_eq!(
            answer_of(&serde_json::json!("Natalia sold 48 clips #### 72")),
            Some(72.0)
        );
        assert_eq!(answer_of(&serde_json::json!(5)), Some(5.0));
    }
}
