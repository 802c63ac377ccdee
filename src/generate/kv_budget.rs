//! How large the rollout engine's paged KV cache and its batch are: the one rule `prefer
//! generate`, `prefer ppo` and `prefer bench generate` size the engine by. The cache holds a full
//! batch of the neediest prompts (never past the model's context), cut to 85% of the memory
//! there is, or to `--kv-memory` where that is given.

use super::engine::pool_blocks;
use crate::model::LlamaConfig;
use crate::ops::memory_budget;
use anyhow::{Context, Result};

/// Tokens per KV-cache block.
pub const BLOCK_SIZE: usize = 16;

/// Without `--max-batch`: every sequence of one engine call decodes together, up to this many.
pub const MAX_BATCH_CAP: usize = 256;

/// The share (in percent) of the free memory the cache may take without `--kv-memory`; the rest
/// is the decode step's scratch and the allocator's slack.
pub const FREE_MEMORY_PERCENT: u128 = 85;

/// Bytes of one KV-cache block of a model: keys and values of [`BLOCK_SIZE`] tokens in every
/// layer, `bytes_per_value` each (2 for the CUDA engine's bf16, 4 for the CPU oracle's f32).
pub fn block_bytes(cfg: &LlamaConfig, bytes_per_value: usize) -> usize {
    2 * cfg.num_hidden_layers * BLOCK_SIZE * cfg.kv_dim() * bytes_per_value
}

/// What one engine is asked to decode.
#[derive(Clone, Debug)]
pub struct KvRequest<'a> {
    /// Token counts of the prompts the engine may see.
    pub prompt_lens: &'a [usize],
    /// Completions per prompt.
    pub n: usize,
    /// Most tokens generated per completion (`--max-new-tokens`).
    pub max_new_tokens: usize,
    /// The model's context, `max_position_embeddings`: no sequence is cached past it.
    pub context: usize,
    /// Sequences one engine call decodes in all (prompts × n): the batch without `--max-batch`.
    pub sequences: usize,
    /// `--max-batch`: most sequences decoded together.
    pub max_batch: Option<usize>,
    /// `--kv-memory` as the user wrote it ("512M", "8G"): the cache's size in bytes.
    pub kv_memory: Option<&'a str>,
}

/// The engine's size: its batch and the blocks of its KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvBudget {
    pub max_batch: usize,
    pub kv_blocks: usize,
}

impl KvRequest<'_> {
    /// `--max-batch`, else every sequence of the call up to [`MAX_BATCH_CAP`].
    pub fn max_batch(&self) -> usize {
        self.max_batch.unwrap_or(self.sequences.min(MAX_BATCH_CAP))
    }

    /// The blocks a full batch of the neediest prompts can ever hold, plus the trash block.
    pub fn needed_blocks(&self) -> usize {
        pool_blocks(
            self.prompt_lens,
            self.n,
            self.max_new_tokens,
            self.max_batch(),
            BLOCK_SIZE,
            self.context,
        )
    }

    /// The batch and the cache for blocks of `block_bytes` bytes each. `available` is the memory
    /// the cache comes out of (the GPU's free memory, or the host's), where it is known: the
    /// needed blocks are cut to [`FREE_MEMORY_PERCENT`] of it, and a `--kv-memory` past it is
    /// refused. `--kv-memory` sets the cache (never more than the needed blocks). At least one
    /// block, whatever the memory.
    pub fn size(&self, block_bytes: usize, available: Option<u128>) -> Result<KvBudget> {
        let need = self.needed_blocks();
        let mut blocks = need;
        if let Some(free) = available {
            blocks = blocks.min((free / 100 * FREE_MEMORY_PERCENT / block_bytes as u128) as usize);
        }
        if let Some(mem) = self.kv_memory {
            let asked = parse_bytes(mem)?;
            memory_budget::ensure_fits(
                &format!("--kv-memory {mem}"),
                asked as u128,
                available,
                "give a smaller --kv-memory, or leave it out to size the cache from the batch",
            )?;
            blocks = (asked / block_bytes).min(need);
        }
        Ok(KvBudget {
            max_batch: self.max_batch(),
            kv_blocks: blocks.max(1),
        })
    }
}

/// `--kv-memory`'s sizes: "512M", "8G", "1.5G", "64K", "65536" (bytes).
pub fn parse_bytes(s: &str) -> Result<usize> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1usize << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let v: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .with_context(|| format!("--kv-memory {s}: expected a size such as 512M or 8G"))?;
    Ok((v * mult as f64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four prompts of 40 tokens, 2 completions each, 100 new tokens, a 2048-token context.
    fn request(lens: &[usize]) -> KvRequest<'_> {
        KvRequest {
            prompt_lens: lens,
            n: 2,
            max_new_tokens: 100,
            context: 2048,
            sequences: lens.len() * 2,
            max_batch: None,
            kv_memory: None,
        }
    }

    #[test]
    fn the_batch_is_every_sequence_up_to_256_unless_given() {
        let lens = [40; 4];
        assert_eq!(request(&lens).max_batch(), 8);
        let many = vec![40; 1000];
        assert_eq!(request(&many).max_batch(), 256);
        let given = KvRequest {
            max_batch: Some(3),
            ..request(&many)
        };
        assert_eq!(given.max_batch(), 3);
    }

    #[test]
    fn without_a_memory_limit_the_cache_holds_a_full_batch_of_the_neediest_prompt() {
        // A 40-token prompt: 2 full shared blocks; each completion's private blocks hold the
        // prompt's last 8 tokens and 99 more: ceil(107 / 16) = 7. Per prompt 2 + 2·7 = 16; the
        // batch of 8 sequences holds 4 prompts: 64 blocks, plus the trash block.
        let lens = [40, 10, 40, 3];
        let b = request(&lens).size(1000, None).unwrap();
        assert_eq!(
            b,
            KvBudget {
                max_batch: 8,
                kv_blocks: 65
            }
        );
    }

    #[test]
    fn free_memory_cuts_the_cache_to_85_percent_of_it() {
        let lens = [40; 4];
        // 85% of 20 000 bytes is 17 000: 17 blocks of 1000 bytes, fewer than the 65 needed.
        let b = request(&lens).size(1000, Some(20_000)).unwrap();
        assert_eq!(b.kv_blocks, 17);
        // Plenty of memory leaves the needed 65.
        assert_eq!(
            request(&lens).size(1000, Some(1 << 40)).unwrap().kv_blocks,
            65
        );
        // Less than a block still gives the engine one.
        assert_eq!(request(&lens).size(1000, Some(10)).unwrap().kv_blocks, 1);
    }

    #[test]
    fn kv_memory_sets_the_cache_but_never_past_what_is_needed() {
        let lens = [40; 4];
        let with = |mem: &'static str| KvRequest {
            kv_memory: Some(mem),
            ..request(&lens)
        };
        // 30K = 30 720 bytes: 30 blocks of 1000, even where 85% of the free memory holds fewer.
        assert_eq!(with("30K").size(1000, Some(32_000)).unwrap().kv_blocks, 30);
        assert_eq!(with("1G").size(1000, None).unwrap().kv_blocks, 65);
        let e = with("1G")
            .size(1000, Some(1 << 20))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--kv-memory 1G needs 1.0 GiB"), "{e}");
        let e = with("lots").size(1000, None).unwrap_err().to_string();
        assert!(e.contains("expected a size such as 512M or 8G"), "{e}");
    }

    #[test]
    fn a_prompt_longer_than_the_context_is_cached_only_to_the_context() {
        // A 3000-token prompt in a 2048-token context gets no new tokens: its 187 full blocks and
        // 8 leftover tokens (one private block each, for 2 completions), 189 blocks; the batch of
        // 2 sequences is one prompt, plus the trash block.
        let lens = [3000];
        let b = request(&lens).size(1000, None).unwrap();
        assert_eq!(b.kv_blocks, 190);
        let inside = [2000];
        // 2000 tokens: 125 full blocks, no leftover; 48 new tokens fit: ceil(47 / 16) = 3 each.
        assert_eq!(
            request(&inside).size(1000, None).unwrap().kv_blocks,
            125 + 6 + 1
        );
    }

    #[test]
    fn sizes_parse_with_their_units() {
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes(" 65536 ").unwrap(), 65536);
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("-1G").is_err());
    }
}
