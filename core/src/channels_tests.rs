use super::*;
use crate::validate::parse_toml;

fn layers(toml_layers: &str) -> Vec<LayerSpec> {
    let doc = format!(
        "[model]\nsequential = [{}]\n[pruning]\nschedule = {{ kind = \"constant_sparsity\", target_sparsity = 0.5 }}\n",
        toml_layers.replace('\n', " ")
    );
    parse_toml(&doc).unwrap().model.sequential.unwrap()
}

fn member(tensor: &str, dim: usize, group: usize) -> Member {
    Member { tensor: tensor.into(), dim, group }
}

#[test]
fn scores_are_row_norms() {
    let w = [3.0, -4.0, 0.0, 1.0, -1.0, 1.0];
    assert_eq!(channel_scores(&w, 2, ChannelScore::L2), vec![5.0, 3f32.sqrt()]);
    assert_eq!(channel_scores(&w, 2, ChannelScore::L1), vec![7.0, 3.0]);
    assert_eq!(channel_scores(&w, 3, ChannelScore::L1), vec![7.0, 1.0, 2.0]);
}

#[test]
fn exact_k_with_ties_to_the_lower_index() {
    assert_eq!(keep_channels(&[1.0, 1.0, 1.0, 1.0], 0.5), [true, true, false, false]);
    assert_eq!(keep_channels(&[0.5, 2.0, 0.5, 0.5, 3.0], 0.6), [false, true, false, false, true]);
    // At least one channel stays, whatever the sparsity.
    assert_eq!(keep_channels(&[0.0, 0.0, 0.0], 0.99), [true, false, false]);
    // The element-wise rule, on the scores.
    for s in [0.0, 0.1, 0.25, 0.5, 0.75, 0.9] {
        let scores = [0.3, 0.1, 0.3, 0.7, 0.0, 0.1, 0.3, 0.2];
        let expect: Vec<bool> = mask::element_mask(&scores, s).iter().map(|&m| m == 1.0).collect();
        assert_eq!(keep_channels(&scores, s), expect, "{s}");
    }
}

#[test]
fn global_scores_are_normalised_per_space_and_no_space_empties() {
    // Space 1's scores are 100x space 0's, but normalised they rank the same.
    let spaces = vec![vec![1.0, 2.0, 3.0, 4.0], vec![100.0, 200.0, 300.0, 400.0]];
    let keep = keep_channels_global(&spaces, 0.5);
    assert_eq!(keep, vec![vec![false, false, true, true], vec![false, false, true, true]]);
    // A space whose channels all rank low keeps its best one; the total stays exact-k.
    let spaces = vec![vec![1.0, 1.0, 1.0, 1.0], vec![0.1, 5.0, 0.1, 0.1], vec![1.0, 1.0]];
    let keep = keep_channels_global(&spaces, 0.6);
    let total: usize = keep.iter().flatten().filter(|&&k| k).count();
    assert_eq!(total, mask::keep_count(10, 0.6));
    assert!(keep.iter().all(|k| k.iter().any(|&x| x)), "{keep:?}");
    assert!(keep[1][1]);
}

#[test]
fn masks_and_indices_follow_groups() {
    // A linear's inputs after flatten: 3 channels of 2 features each.
    let keep = [true, false, true];
    assert_eq!(slice_mask(&[2, 6], 1, 2, &keep), [1., 1., 0., 0., 1., 1., 1., 1., 0., 0., 1., 1.]);
    assert_eq!(slice_mask(&[3, 2], 0, 1, &keep), [1., 1., 0., 0., 1., 1.]);
    assert_eq!(kept_indices(&keep, 2), [0, 1, 4, 5]);
    assert_eq!(kept_indices(&keep, 1), [0, 2]);
}

#[test]
fn conv_batchnorm_flatten_linear_dependencies() {
    let specs = layers(
        r#"{ type = "conv2d", in = 1, out = 4, kernel = 3, padding = 1 }, { type = "batchnorm2d", features = 4 },
           { type = "relu" }, { type = "maxpool2d", kernel = 2 }, { type = "conv2d", in = 4, out = 6, kernel = 3, bias = false },
           { type = "flatten" }, { type = "linear", in = 24, out = 5 }, { type = "dropout", p = 0.1 },
           { type = "linear", in = 5, out = 10 }"#,
    );
    let g = ChannelGraph::of_sequential(&specs);
    assert_eq!(g.spaces.len(), 4);
    let s0 = &g.spaces[0];
    assert_eq!((s0.channels, s0.pinned.as_deref(), &s0.producers[..]), (4, None, &["0.weight".to_string()][..]));
    assert_eq!(
        s0.members,
        vec![
            member("0.weight", 0, 1),
            member("0.bias", 0, 1),
            member("1.weight", 0, 1),
            member("1.bias", 0, 1),
            member("1.running_mean", 0, 1),
            member("1.running_var", 0, 1),
            member("4.weight", 1, 1),
        ]
    );
    // Flatten: each of conv 4's 6 channels spans 24 / 6 = 4 inputs of the linear.
    assert_eq!(g.spaces[1].members, vec![member("4.weight", 0, 1), member("6.weight", 1, 4)]);
    assert_eq!(g.spaces[2].members, vec![member("6.weight", 0, 1), member("6.bias", 0, 1), member("8.weight", 1, 1)]);
    assert!(g.spaces[3].pinned.as_deref().unwrap().contains("classes"));
    let kinds: Vec<(&str, &str, Option<usize>)> =
        g.layers.iter().map(|l| (l.layer.as_str(), l.kind, l.space)).collect();
    assert_eq!(
        kinds,
        [
            ("0", "conv2d", Some(0)),
            ("1", "batchnorm", Some(0)),
            ("4", "conv2d", Some(1)),
            ("6", "linear", Some(2)),
            ("8", "linear", Some(3))
        ]
    );
    let slim = g.slim_layers(&specs, &[2, 3, 4, 10]);
    let expect = layers(
        r#"{ type = "conv2d", in = 1, out = 2, kernel = 3, padding = 1 }, { type = "batchnorm2d", features = 2 },
           { type = "relu" }, { type = "maxpool2d", kernel = 2 }, { type = "conv2d", in = 2, out = 3, kernel = 3, bias = false },
           { type = "flatten" }, { type = "linear", in = 12, out = 4 }, { type = "dropout", p = 0.1 },
           { type = "linear", in = 4, out = 10 }"#,
    );
    assert_eq!(slim, expect);
    // 1x8x8 input: conv 8x8 (4*1*9*64), pool 4x4, conv 2x2 (6*4*9*4), linear 24x5, 5x10.
    let dense = 2 * (4 * 9 * 64 + 6 * 4 * 9 * 4 + 24 * 5 + 5 * 10);
    assert_eq!(flops(&specs, &[1, 8, 8]), Some(dense));
    assert_eq!(flops(&expect, &[1, 8, 8]), Some(2 * (2 * 9 * 64 + 3 * 2 * 9 * 4 + 12 * 4 + 4 * 10)));
    assert_eq!(flops(&specs, &[3, 8, 8]), None);
}

#[test]
fn residual_sums_couple_channels() {
    let specs = layers(
        r#"{ type = "conv2d", in = 1, out = 4, kernel = 3, padding = 1 }, { type = "relu" },
           { type = "residual", layers = [{ type = "conv2d", in = 4, out = 4, kernel = 3, padding = 1 }, { type = "relu" },
                                          { type = "conv2d", in = 4, out = 4, kernel = 3, padding = 1 }] },
           { type = "residual", layers = [{ type = "conv2d", in = 4, out = 8, kernel = 3, padding = 1, stride = 2 }],
             projection = { in = 4, out = 8, stride = 2 } },
           { type = "global_avgpool" }, { type = "linear", in = 8, out = 3 }"#,
    );
    let g = ChannelGraph::of_sequential(&specs);
    // conv 0 + block 2's last conv (identity sum); block 2's inner conv; block 3's conv +
    // projection; the classifier.
    let producers: Vec<Vec<&str>> = g.spaces.iter().map(|s| s.producers.iter().map(String::as_str).collect()).collect();
    assert_eq!(
        producers,
        [
            vec!["0.weight", "2.layers.2.weight"],
            vec!["2.layers.0.weight"],
            vec!["3.layers.0.weight", "3.projection.weight"],
            vec!["5.weight"]
        ]
    );
    let consumers = |s: usize| -> Vec<&str> {
        g.spaces[s].members.iter().filter(|m| m.dim == 1).map(|m| m.tensor.as_str()).collect()
    };
    assert_eq!(consumers(0), ["2.layers.0.weight", "3.layers.0.weight", "3.projection.weight"]);
    assert_eq!(consumers(1), ["2.layers.2.weight"]);
    assert_eq!(consumers(2), ["5.weight"]);
    assert!(g.spaces[..3].iter().all(|s| s.pinned.is_none()));
    assert!(g.spaces[3].pinned.is_some());
    let slim = g.slim_layers(&specs, &[2, 3, 5, 3]);
    let expect = layers(
        r#"{ type = "conv2d", in = 1, out = 2, kernel = 3, padding = 1 }, { type = "relu" },
           { type = "residual", layers = [{ type = "conv2d", in = 2, out = 3, kernel = 3, padding = 1 }, { type = "relu" },
                                          { type = "conv2d", in = 3, out = 2, kernel = 3, padding = 1 }] },
           { type = "residual", layers = [{ type = "conv2d", in = 2, out = 5, kernel = 3, padding = 1, stride = 2 }],
             projection = { in = 2, out = 5, stride = 2 } },
           { type = "global_avgpool" }, { type = "linear", in = 5, out = 3 }"#,
    );
    assert_eq!(slim, expect);
}

#[test]
fn untracked_channels_are_pinned() {
    // The input feeds an identity residual: the first linear's outputs are added to the input.
    let specs = layers(
        r#"{ type = "linear", in = 4, out = 4 }, { type = "reshape", shape = [2, 2] }, { type = "flatten" },
           { type = "linear", in = 4, out = 6 }, { type = "residual", layers = [{ type = "linear", in = 6, out = 6 }] },
           { type = "linear", in = 6, out = 2 }"#,
    );
    let g = ChannelGraph::of_sequential(&specs);
    assert!(g.spaces[0].pinned.as_deref().unwrap().contains("reshape"));
    // Space 1 (linear 3) and linear 4.layers.0 are coupled by the sum, and prunable.
    assert_eq!(g.spaces[1].producers, ["3.weight", "4.layers.0.weight"]);
    assert!(g.spaces[1].pinned.is_none());
    let input_sum = layers(
        r#"{ type = "residual", layers = [{ type = "linear", in = 4, out = 4 }] }, { type = "linear", in = 4, out = 2 }"#,
    );
    let g = ChannelGraph::of_sequential(&input_sum);
    assert!(g.spaces[0].pinned.as_deref().unwrap().contains("not tracked"));
}

#[test]
fn user_models_get_one_space_per_weight_and_keep_their_classifier() {
    let params: Vec<(String, Vec<usize>)> = vec![
        ("features.0.weight".into(), vec![8, 3, 3, 3]),
        ("features.0.bias".into(), vec![8]),
        ("head.weight".into(), vec![10, 8]),
        ("head.bias".into(), vec![10]),
    ];
    let g = ChannelGraph::of_tensors(&params, |_| true);
    assert_eq!(g.spaces.len(), 2);
    assert_eq!(g.spaces[0].members, vec![member("features.0.weight", 0, 1), member("features.0.bias", 0, 1)]);
    assert!(g.spaces[0].pinned.is_none());
    assert!(g.spaces[1].pinned.as_deref().unwrap().contains("classifier"));
    let g = ChannelGraph::of_tensors(&params, |n| n.starts_with("head"));
    assert_eq!(g.spaces.len(), 1);
}
