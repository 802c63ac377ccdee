//! The built-in byte-level tokenizer: every byte string round-trips, specials have fixed ids, and
//! a tokenizer too large for the model is refused.

use prefer::data::tokenizer::{byte_tokenizer_json, TextTokenizer};
use prefer::model::LlamaConfig;

#[test]
fn byte_tokenizer_round_trips_any_text() {
    let tok = TextTokenizer::from_json(&byte_tokenizer_json()).unwrap();
    let text = "Héllo, wörld!\n\ttabs  and ✓ emoji 🦀";
    let ids = tok.encode(text, true).unwrap();
    assert_eq!(ids[0], 256, "BOS first");
    assert_eq!(ids.len(), 1 + text.len(), "one id per byte");
    assert_eq!(
        &ids[1..],
        text.bytes().map(u32::from).collect::<Vec<_>>().as_slice()
    );
    assert_eq!(tok.decode(&ids, true).unwrap(), text);
    assert_eq!(
        (tok.token_id("</s>"), tok.token_id("<pad>")),
        (Some(257), Some(258))
    );
}

#[test]
fn tokenizer_larger_than_the_vocab_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), byte_tokenizer_json()).unwrap();
    let mut cfg = LlamaConfig::preset("tiny").unwrap();
    cfg.vocab_size = 200;
    let err = format!("{:#}", TextTokenizer::load(dir.path(), &cfg).err().unwrap());
    assert!(
        err.contains("259 tokens") && err.contains("vocab_size is 200"),
        "{err}"
    );
}
