//! Unit tests of `bitmask` (and of the `tensorfile` reading and writing it relies on).

use super::*;
use proptest::prelude::*;

fn f32_tensor(name: &str, shape: &[usize], values: &[f32]) -> TensorData {
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    TensorData::new(name, Dtype::F32, shape.to_vec(), data).unwrap()
}

/// [`pack`] without its size test: every packable weight in packed form, so that the layout of
/// tensors too small to gain from packing can be checked.
fn pack_all(tensors: &[TensorData]) -> Vec<TensorData> {
    tensors
        .iter()
        .flat_map(|t| match packed_module(t) {
            Some(module) => pack_weight(module, t).unwrap().to_vec(),
            None => vec![t.clone()],
        })
        .collect()
}

fn by_name<'a>(tensors: &'a [TensorData], name: &str) -> &'a TensorData {
    tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name}"))
}

/// A 2x10 weight worked by hand:
/// row 0 = [0, 1, 0, 0, 0, 0, 0, 0, 2, -0.0] -> bits 1 and 8 -> bytes [0b0000_0010, 0b0000_0001]
/// row 1 = [3, 0, 0, 4, 0, 0, 0, 0, 0, 5]    -> bits 0, 3, 9 -> bytes [0b0000_1001, 0b0000_0010]
fn hand_weight() -> TensorData {
    #[rustfmt::skip]
    let values = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, -0.0,
                  3.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0];
    f32_tensor("0.weight", &[2, 10], &values)
}

#[test]
fn packs_hand_worked_example_exactly() {
    let bias = f32_tensor("0.bias", &[2], &[0.5, 0.0]);
    let packed = pack(&[hand_weight(), bias.clone()]).unwrap();
    let names: Vec<&str> = packed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["0.shape", "0.compressed", "0.bitmask", "0.row_offsets", "0.bias"]);

    let bitmask = by_name(&packed, "0.bitmask");
    assert_eq!((bitmask.dtype, bitmask.shape.clone()), (Dtype::U8, vec![2, 2]));
    assert_eq!(bitmask.data, [0b0000_0010, 0b0000_0001, 0b0000_1001, 0b0000_0010]);

    let compressed = by_name(&packed, "0.compressed");
    assert_eq!((compressed.dtype, compressed.shape.clone()), (Dtype::F32, vec![5]));
    assert_eq!(compressed, &f32_tensor("0.compressed", &[5], &[1.0, 2.0, 3.0, 4.0, 5.0]));

    let shape = by_name(&packed, "0.shape");
    assert_eq!((shape.dtype, shape.shape.clone(), shape.data.clone()), (Dtype::I64, vec![2], i64_bytes(&[2, 10])));

    let offsets = by_name(&packed, "0.row_offsets");
    assert_eq!((offsets.dtype, offsets.shape.clone(), offsets.data.clone()), (Dtype::I64, vec![2], i64_bytes(&[0, 2])));

    assert_eq!(by_name(&packed, "0.bias"), &bias, "rank-1 tensors stay as they are");
}

#[test]
fn writes_hand_worked_file_byte_for_byte() {
    let packed = pack(&[hand_weight()]).unwrap();
    let metadata = HashMap::from([(SPARSITY_FORMAT_KEY.to_string(), SPARSE_BITMASK.to_string())]);
    let file = write_safetensors(&packed, Some(metadata)).unwrap();
    let header = concat!(
        r#"{"__metadata__":{"format":"pt","sparsity_format":"sparse-bitmask"},"#,
        r#""0.row_offsets":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"#,
        r#""0.shape":{"dtype":"I64","shape":[2],"data_offsets":[16,32]},"#,
        r#""0.compressed":{"dtype":"F32","shape":[5],"data_offsets":[32,52]},"#,
        r#""0.bitmask":{"dtype":"U8","shape":[2,2],"data_offsets":[52,56]}}"#
    );
    let padded = header.len().next_multiple_of(8);
    let mut expected = (padded as u64).to_le_bytes().to_vec();
    expected.extend(header.as_bytes());
    expected.resize(8 + padded, b' ');
    expected.extend(i64_bytes(&[0, 2]));
    expected.extend(i64_bytes(&[2, 10]));
    expected.extend([1.0f32, 2.0, 3.0, 4.0, 5.0].iter().flat_map(|v| v.to_le_bytes()));
    expected.extend([0b0000_0010, 0b0000_0001, 0b0000_1001, 0b0000_0010]);
    assert_eq!(String::from_utf8_lossy(&file[8..8 + padded]), String::from_utf8_lossy(&expected[8..8 + padded]));
    assert_eq!(file, expected);
}

#[test]
fn unpacks_hand_worked_example() {
    let mut dense = hand_weight();
    let unpacked = unpack(&pack(&[dense.clone()]).unwrap()).unwrap();
    dense.data[9 * 4..10 * 4].copy_from_slice(&0.0f32.to_le_bytes()); // -0.0 comes back as +0.0
    assert_eq!(unpacked, [dense]);
}

#[test]
fn writer_matches_the_safetensors_crate() {
    let tensors = [
        hand_weight(),
        f32_tensor("a.bias", &[3], &[1.0, 2.0, 3.0]),
        TensorData::new("steps", Dtype::I64, vec![1], i64_bytes(&[7])).unwrap(),
        TensorData::new("m", Dtype::U8, vec![3], vec![1, 2, 3]).unwrap(),
    ];
    let ours = write_safetensors(&tensors, None).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|t| (t.name.clone(), safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap()))
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    assert_eq!(ours, safetensors::serialize(views, Some(metadata)).unwrap());
}

#[test]
fn file_round_trip_keeps_metadata_and_marks_packing() {
    let dense = write_safetensors(&[hand_weight()], Some(HashMap::from([("note".into(), "x".into())]))).unwrap();
    let packed = pack_safetensors(&dense).unwrap();
    let (_, metadata) = read_safetensors(&packed).unwrap();
    let metadata = metadata.unwrap();
    assert_eq!(metadata[SPARSITY_FORMAT_KEY], SPARSE_BITMASK);
    assert_eq!((metadata["format"].as_str(), metadata["note"].as_str()), ("pt", "x"));
    let unpacked = unpack_safetensors(&packed).unwrap();
    let (tensors, metadata) = read_safetensors(&unpacked).unwrap();
    assert!(!metadata.unwrap().contains_key(SPARSITY_FORMAT_KEY));
    assert_eq!(tensors, unpack(&pack(&[hand_weight()]).unwrap()).unwrap());
}

#[test]
fn leaves_non_weights_alone() {
    let tensors = [
        f32_tensor("weight", &[1, 2], &[1.0, 0.0]),        // no module prefix
        f32_tensor("0.weight_orig", &[1, 2], &[1.0, 0.0]), // not `.weight`
        f32_tensor("1.weight", &[2], &[1.0, 0.0]),         // rank 1
        f32_tensor("2.weight", &[0, 4], &[]),              // empty
    ];
    assert_eq!(pack(&tensors).unwrap(), tensors);
}

#[test]
fn packs_other_dtypes_keeping_them() {
    // bf16 -0.0 is 0x8000; f16 1.0 is 0x3c00; f64 uses eight bytes.
    let bf16 = TensorData::new("b.weight", Dtype::BF16, vec![1, 3], vec![0x00, 0x80, 0x80, 0x3f, 0, 0]).unwrap();
    let f16 = TensorData::new("h.weight", Dtype::F16, vec![1, 2], vec![0x00, 0x3c, 0x00, 0x00]).unwrap();
    let f64s = TensorData::new(
        "d.weight",
        Dtype::F64,
        vec![1, 2],
        [0.0f64, -2.5].iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
    .unwrap();
    let packed = pack_all(&[bf16, f16, f64s]);
    assert_eq!(by_name(&packed, "b.compressed").data, [0x80, 0x3f]);
    assert_eq!(by_name(&packed, "b.bitmask").data, [0b010]);
    assert_eq!(
        (by_name(&packed, "h.compressed").dtype, by_name(&packed, "h.bitmask").data.clone()),
        (Dtype::F16, vec![0b01])
    );
    assert_eq!(by_name(&packed, "d.compressed").data, (-2.5f64).to_le_bytes());
}

#[test]
fn a_weight_packing_would_enlarge_stays_dense_and_is_named() {
    let dense: Vec<f32> = (0..64 * 64).map(|i| 1.0 + i as f32).collect();
    let sparse: Vec<f32> = dense.iter().enumerate().map(|(i, &v)| if i % 10 == 0 { v } else { 0.0 }).collect();
    // 3% zeros: packed, 4 bytes per kept value plus the bitmask and offsets come to more.
    let few: Vec<f32> = dense.iter().enumerate().map(|(i, &v)| if i % 32 == 0 { 0.0 } else { v }).collect();
    let tensors = [
        f32_tensor("a.weight", &[64, 64], &dense),
        f32_tensor("b.weight", &[64, 64], &sparse),
        f32_tensor("c.weight", &[64, 64], &few),
    ];
    let (packed, kept) = pack_reporting(&tensors).unwrap();
    assert_eq!(kept, ["a.weight", "c.weight"]);
    let names: Vec<&str> = packed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a.weight", "b.shape", "b.compressed", "b.bitmask", "b.row_offsets", "c.weight"]);
    assert_eq!(unpack(&packed).unwrap(), tensors);
    let file = write_safetensors(&tensors, None).unwrap();
    let (bytes, kept_again) = pack_safetensors_reporting(&file).unwrap();
    assert_eq!(kept_again, kept);
    assert!(bytes.len() < file.len());
}

#[test]
fn refuses_names_compressed_tensors_would_misread() {
    let err = pack(&[hand_weight(), f32_tensor("0.shape", &[1], &[1.0])]).unwrap_err().to_string();
    assert!(err.contains("`0.shape`") && err.contains("compressed-tensors reads"), "{err}");
    let err = pack(&[hand_weight(), hand_weight()]).unwrap_err().to_string();
    assert!(err.contains("more than once"), "{err}");
}

#[test]
fn refuses_unpackable_dtype() {
    let e8m0 = TensorData::new("q.weight", Dtype::F8_E8M0, vec![2, 2], vec![1, 2, 3, 4]).unwrap();
    let err = pack(&[e8m0]).unwrap_err().to_string();
    assert!(err.contains("`q.weight`") && err.contains("F8_E8M0"), "{err}");
}

#[test]
fn rejects_data_of_the_wrong_length() {
    let err = TensorData::new("x", Dtype::F32, vec![2, 2], vec![0; 15]).unwrap_err().to_string();
    assert!(err.contains("`x`") && err.contains("15 data bytes") && err.contains("need 16"), "{err}");
}

/// Packs the hand example, lets `corrupt` damage it, and returns the unpack error.
fn unpack_error(corrupt: impl FnOnce(&mut Vec<TensorData>)) -> String {
    let mut packed = pack(&[hand_weight()]).unwrap();
    corrupt(&mut packed);
    unpack(&packed).unwrap_err().to_string()
}

fn part<'a>(tensors: &'a mut [TensorData], name: &str) -> &'a mut TensorData {
    tensors.iter_mut().find(|t| t.name == name).unwrap()
}

#[test]
fn unpack_rejects_missing_parts() {
    let err = unpack_error(|p| p.retain(|t| t.name != "0.bitmask" && t.name != "0.row_offsets"));
    assert!(err.contains("packed weight `0`") && err.contains("missing `0.bitmask`, `0.row_offsets`"), "{err}");
}

#[test]
fn unpack_rejects_bitmask_of_wrong_shape() {
    let err = unpack_error(|p| {
        let b = part(p, "0.bitmask");
        b.shape = vec![4, 1];
    });
    assert!(err.contains("`0.bitmask` is U8 [4, 1]") && err.contains("[2, 2]"), "{err}");
}

#[test]
fn unpack_rejects_wrong_offsets() {
    let err = unpack_error(|p| part(p, "0.row_offsets").data = i64_bytes(&[0, 3]));
    assert!(err.contains("row 1 starts at offset 3") && err.contains("at 2"), "{err}");
}

#[test]
fn unpack_rejects_value_count_mismatch() {
    let err = unpack_error(|p| {
        let c = part(p, "0.compressed");
        c.shape = vec![4];
        c.data.truncate(16);
    });
    assert!(err.contains("marks 5 non-zeros") && err.contains("holds 4 values"), "{err}");
}

#[test]
fn unpack_rejects_padding_bits() {
    let err = unpack_error(|p| part(p, "0.bitmask").data[1] |= 0b1000_0000);
    assert!(err.contains("past the row's end"), "{err}");
}

#[test]
fn unpack_rejects_bad_dense_shape() {
    let err = unpack_error(|p| part(p, "0.shape").data = i64_bytes(&[2, -10]));
    assert!(err.contains("negative dimension -10"), "{err}");
    let err = unpack_error(|p| {
        let s = part(p, "0.shape");
        s.dtype = Dtype::I32;
        s.shape = vec![4];
    });
    assert!(err.contains("`0.shape` must be a non-empty 1-D I64 tensor"), "{err}");
    let err = unpack_error(|p| part(p, "0.shape").data = i64_bytes(&[i64::MAX, 4]));
    assert!(err.contains("overflows"), "{err}");
}

#[test]
fn unpack_rejects_collision_with_existing_weight() {
    let err = unpack_error(|p| p.push(hand_weight()));
    assert!(err.contains("`0.weight`") && err.contains("more than once"), "{err}");
}

#[test]
fn read_rejects_garbage_and_truncation() {
    let file = write_safetensors(&[hand_weight()], None).unwrap();
    assert!(read_safetensors(&file[..file.len() - 1]).is_err());
    assert!(read_safetensors(&file[..5]).is_err());
    assert!(read_safetensors(b"").is_err());
    let mut lying = file.clone();
    lying[0] = 0xff; // header length past the end of the file
    assert!(read_safetensors(&lying).is_err());
}

/// A random sparse tensor of rank 2..=4 in one of the float dtypes the engine exports.
fn sparse_tensor() -> impl Strategy<Value = TensorData> {
    let dtypes = prop_oneof![Just(Dtype::F32), Just(Dtype::F16), Just(Dtype::BF16), Just(Dtype::F64)];
    (prop::collection::vec(1usize..=11, 2..=4), dtypes, 0.0f64..=1.0).prop_flat_map(|(shape, dtype, density)| {
        let n: usize = shape.iter().product();
        let size = dtype.bitsize() / 8;
        let element = prop::collection::vec(any::<u8>(), size);
        let keep = prop::bool::weighted(density);
        prop::collection::vec((keep, element), n).prop_map(move |elements| {
            let data = elements.into_iter().flat_map(|(keep, e)| if keep { e } else { vec![0; size] }).collect();
            TensorData::new("layer.weight", dtype, shape.clone(), data).unwrap()
        })
    })
}

/// The tensor as unpacking returns it: every zero (including -0.0) as all-zero bytes.
fn canonical_zeros(t: &TensorData) -> TensorData {
    let (zero, size) = packable_element(&t.name, t.dtype).unwrap();
    let data =
        t.data.chunks_exact(size).flat_map(|e| if zero.is_zero(e) { vec![0; size] } else { e.to_vec() }).collect();
    TensorData { data, ..t.clone() }
}

proptest! {
    #[test]
    fn pack_round_trips_through_a_file(weight in sparse_tensor()) {
        let bias = f32_tensor("layer.bias", &[2], &[1.0, -0.0]);
        let file = write_safetensors(&pack_all(&[weight.clone(), bias.clone()]), None).unwrap();
        let (read, _) = read_safetensors(&file).unwrap();
        let unpacked = unpack(&read).unwrap();
        prop_assert_eq!(by_name(&unpacked, "layer.weight"), &canonical_zeros(&weight));
        // `pack` itself packs or keeps the weight, whichever is smaller; both read back.
        let (packed, kept) = pack_reporting(&[weight.clone(), bias.clone()]).unwrap();
        let unpacked = unpack(&packed).unwrap();
        if kept.is_empty() {
            prop_assert!(packed.iter().map(|t| t.data.len()).sum::<usize>() < weight.data.len() + bias.data.len());
            prop_assert_eq!(by_name(&unpacked, "layer.weight"), &canonical_zeros(&weight));
        } else {
            prop_assert_eq!(kept, vec!["layer.weight".to_string()]);
            prop_assert_eq!(by_name(&unpacked, "layer.weight"), &weight);
        }
        prop_assert_eq!(by_name(&unpacked, "layer.bias"), &bias);
    }

    #[test]
    fn packed_sizes_follow_the_layout(weight in sparse_tensor()) {
        let packed = pack_all(std::slice::from_ref(&weight));
        let (zero, size) = packable_element(&weight.name, weight.dtype).unwrap();
        let nnz = weight.data.chunks_exact(size).filter(|e| !zero.is_zero(e)).count();
        let bitmask = by_name(&packed, "layer.bitmask");
        prop_assert_eq!(bitmask.data.iter().map(|b| b.count_ones() as usize).sum::<usize>(), nnz);
        prop_assert_eq!(by_name(&packed, "layer.compressed").shape.clone(), vec![nnz]);
        let last = *weight.shape.last().unwrap();
        prop_assert_eq!(*bitmask.shape.last().unwrap(), last.div_ceil(8));
        prop_assert_eq!(&by_name(&packed, "layer.row_offsets").shape[..], &weight.shape[..weight.shape.len() - 1]);
    }

    #[test]
    fn writing_is_deterministic(weight in sparse_tensor()) {
        let packed = pack(&[weight]).unwrap();
        let mut reversed = packed.clone();
        reversed.reverse();
        let metadata = || Some(HashMap::from([("b".to_string(), "1".to_string()), ("a".to_string(), "2".to_string())]));
        prop_assert_eq!(write_safetensors(&packed, metadata()).unwrap(), write_safetensors(&reversed, metadata()).unwrap());
    }

    #[test]
    fn reading_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = read_safetensors(&bytes);
        let _ = unpack_safetensors(&bytes);
    }

    #[test]
    fn corrupting_a_packed_file_never_panics(flip in 0usize..10_000, value in any::<u8>()) {
        let file = write_safetensors(&pack(&[hand_weight()]).unwrap(), None).unwrap();
        let mut bad = file.clone();
        let at = flip % bad.len();
        bad[at] = value;
        let _ = unpack_safetensors(&bad);
    }
}
