//! The paged KV cache's bookkeeping on the host: which blocks are free, and how many sequences
//! share each one (the K rollouts of a prompt share its full prompt blocks).

use anyhow::{bail, Result};

pub struct BlockPool {
    free: Vec<u32>,
    refs: Vec<u32>,
    /// Blocks promised to admitted sequences but not yet taken.
    reserved: usize,
}

impl BlockPool {
    pub fn new(blocks: usize) -> Self {
        BlockPool {
            // Popped from the end: block 0 is handed out first.
            free: (0..blocks as u32).rev().collect(),
            refs: vec![0; blocks],
            reserved: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.refs.len()
    }

    /// Blocks neither in use nor promised.
    pub fn available(&self) -> usize {
        self.free.len() - self.reserved
    }

    /// Promises `n` blocks to sequences being admitted, so that they can never run out.
    pub fn reserve(&mut self, n: usize) -> Result<()> {
        if n > self.available() {
            bail!(
                "KV cache: {n} blocks asked for, {} available",
                self.available()
            );
        }
        self.reserved += n;
        Ok(())
    }

    /// Takes one promised block, used by `users` sequences.
    pub fn take(&mut self, users: u32) -> u32 {
        assert!(self.reserved > 0, "a block taken without a reservation");
        self.reserved -= 1;
        let b = self.free.pop().expect("reserved blocks are free");
        self.refs[b as usize] = users;
        b
    }

    /// Gives back `n` promised blocks a finished sequence did not need.
    pub fn unreserve(&mut self, n: usize) {
        // Checked in release builds too: a wrapped count would make the pool look full.
        assert!(
            n <= self.reserved,
            "{n} blocks given back of {} reserved",
            self.reserved
        );
        self.reserved -= n;
    }

    /// One sequence stops using `blocks`; a block no sequence uses is free again.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks {
            let r = &mut self.refs[b as usize];
            *r -= 1;
            if *r == 0 {
                self.free.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_blocks_are_freed_by_their_last_user() {
        let mut pool = BlockPool::new(4);
        pool.reserve(3).unwrap();
        let shared = pool.take(2);
        let (a, b) = (pool.take(1), pool.take(1));
        assert_eq!(pool.available(), 1);
        pool.release(&[shared, a]);
        assert_eq!(pool.available(), 2, "the shared block still has a user");
        pool.release(&[shared, b]);
        assert_eq!(pool.available(), 4);
        assert!(pool.reserve(5).is_err());
    }
}
