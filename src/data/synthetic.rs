//! The built-in synthetic preference task of `prefer demo` and the learning tests: a user asks
//! for a reply about a topic; the chosen reply uses kind words, the rejected one unkind words.
//! A tiny byte-level model can learn it in seconds, and a model that has learnt it ranks held-out
//! pairs (new word combinations and topics) correctly.

use rand::{rngs::StdRng, seq::IndexedRandom, SeedableRng};

const KIND: [&str; 10] = [
    "great", "kind", "happy", "bright", "calm", "warm", "clear", "fair", "gentle", "brave",
];
const UNKIND: [&str; 10] = [
    "awful", "cruel", "sad", "dark", "angry", "cold", "messy", "unfair", "harsh", "weak",
];
const TOPICS: [&str; 12] = [
    "the weather",
    "my dog",
    "the city",
    "our team",
    "this book",
    "the sea",
    "your day",
    "the garden",
    "a song",
    "the market",
    "my friend",
    "the road",
];

/// `n` pairs as JSONL lines {"prompt", "chosen", "rejected"}, reproducible from `seed`.
pub fn synthetic_preferences(n: usize, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::new();
    for _ in 0..n {
        let topic = TOPICS.choose(&mut rng).expect("non-empty");
        let reply = |words: &[&str], rng: &mut StdRng| {
            let a = words.choose(rng).expect("non-empty");
            let b = words.choose(rng).expect("non-empty");
            format!("{topic} is {a} and {b}.")
        };
        let line = serde_json::json!({
            "prompt": format!("Tell me about {topic}."),
            "chosen": reply(&KIND, &mut rng),
            "rejected": reply(&UNKIND, &mut rng),
        });
        out += &line.to_string();
        out.push('\n');
    }
    out
}
