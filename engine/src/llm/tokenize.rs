//! A model's `tokenizer.json` through the `tokenizers` crate (the Rust core of the Python
//! package transformers' fast tokenizers wrap), so text tokenizes in the worker to the ids
//! `AutoTokenizer.from_pretrained(dir)(text)["input_ids"]` gives.

use std::path::Path;

use crate::EngineError;

/// The file name every message names.
pub use prune_core::spec::TOKENIZER_FILE;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Tokenizer, EngineError> {
        let json = std::fs::read_to_string(path)
            .map_err(|e| EngineError::Model(format!("{TOKENIZER_FILE}: cannot read {}: {e}", path.display())))?;
        Tokenizer::from_json(&json)
    }

    pub fn from_json(json: &str) -> Result<Tokenizer, EngineError> {
        let mut inner: tokenizers::Tokenizer =
            json.parse().map_err(|e| EngineError::Model(format!("{TOKENIZER_FILE}: {e}")))?;
        // transformers turns a saved truncation or padding off unless the call asks for one.
        inner
            .with_truncation(None)
            .map_err(|e| EngineError::Model(format!("{TOKENIZER_FILE}: {e}")))?
            .with_padding(None);
        Ok(Tokenizer { inner })
    }

    /// The ids of `text` with the tokenizer's special tokens added (its post-processor, e.g. a
    /// leading BOS), as transformers returns them by default. No truncation or padding.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, EngineError> {
        let encoding = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| EngineError::Data(format!("{TOKENIZER_FILE}: cannot encode the text: {e}")))?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
