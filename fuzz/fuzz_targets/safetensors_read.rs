//! Untrusted safetensors bytes (uploads, downloads, `prunectl unpack`): `read_safetensors` never
//! panics, and what it accepts writes back and reads again unchanged; `unpack_safetensors` and
//! `pack_safetensors` never panic, and what packs unpacks and packs again to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prune_core::bitmask::{
    pack_safetensors, read_safetensors, unpack_safetensors, write_safetensors, Metadata, TensorData,
};

fn by_name(mut tensors: Vec<TensorData>) -> Vec<TensorData> {
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    tensors
}

/// The metadata the writer puts in the file: `format = pt` added when missing.
fn as_written(metadata: Option<Metadata>) -> Metadata {
    let mut m = metadata.unwrap_or_default();
    m.entry("format".into()).or_insert_with(|| "pt".into());
    m
}

fuzz_target!(|data: &[u8]| {
    if let Ok((tensors, metadata)) = read_safetensors(data) {
        for t in &tensors {
            // Every tensor read has as many bytes as its dtype and shape need.
            TensorData::new(t.name.clone(), t.dtype, t.shape.clone(), t.data.clone())
                .unwrap_or_else(|e| panic!("read an inconsistent tensor: {e}"));
        }
        let written = write_safetensors(&tensors, metadata.clone())
            .unwrap_or_else(|e| panic!("a file that reads must write back: {e}"));
        let (again, metadata_again) =
            read_safetensors(&written).unwrap_or_else(|e| panic!("a written file must read back: {e}"));
        assert_eq!(by_name(again.clone()), by_name(tensors), "tensors changed on round trip");
        assert_eq!(metadata_again, Some(as_written(metadata)), "metadata changed on round trip");
        // Writing is canonical: a second write gives the same bytes.
        assert_eq!(write_safetensors(&again, metadata_again).unwrap(), written);
    }

    if let Ok(dense) = unpack_safetensors(data) {
        read_safetensors(&dense).unwrap_or_else(|e| panic!("an unpacked file must read: {e}"));
    }

    if let Ok(packed) = pack_safetensors(data) {
        let dense = unpack_safetensors(&packed).unwrap_or_else(|e| panic!("a file we packed must unpack: {e}"));
        // Unpacking canonicalises zeros (-0.0 -> +0.0), which packing ignores anyway.
        let repacked = pack_safetensors(&dense).unwrap_or_else(|e| panic!("an unpacked file must pack again: {e}"));
        assert_eq!(repacked, packed, "pack(unpack(pack(x))) != pack(x)");
    }
});
