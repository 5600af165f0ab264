//! The built-in layers against PyTorch: state-dict names and shapes, BatchNorm numerics
//! (goldens from `tests/python/sequential_module.py golden`, torch 2.13.0), output shapes,
//! and the residual sum.

use serde::Deserialize;

use super::*;

#[derive(Deserialize)]
struct Golden {
    spec: Vec<LayerSpec>,
    state_dict: Vec<(String, Vec<i64>)>,
    batchnorm2d: BatchNormGolden,
    batchnorm1d: BatchNormGolden,
}

#[derive(Deserialize)]
struct BatchNormGolden {
    train_out: Vec<f32>,
    eval_out: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    #[serde(default)]
    num_batches_tracked: Option<i64>,
}

fn golden() -> Golden {
    serde_json::from_str(include_str!("testdata/layers_golden.json")).unwrap()
}

/// The inputs `sequential_module.py` makes: ((i * 37) % 101) / 10 * scale + shift.
fn pattern(shape: &[i64], scale: f64, shift: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    let i = Tensor::arange(n, (Kind::Int64, Device::Cpu));
    ((i * 37).remainder(101).to_kind(Kind::Float) / 10.0 * scale + shift).reshape(shape)
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

fn assert_close(got: &Tensor, want: &[f32], what: &str) {
    let got = values(got);
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{what}[{i}]: {g} != {w}");
    }
}

#[test]
fn state_dict_names_and_shapes_are_pytorchs() {
    let _rng = crate::rng::global_generator_lock();
    let g = golden();
    let model = Sequential::new(&g.spec, 0, Device::Cpu).unwrap();
    let ours: Vec<(String, Vec<i64>)> =
        model.params.iter().chain(&model.buffers).map(|(n, t)| (n.clone(), t.size())).collect();
    let mut want = g.state_dict.clone();
    // Parameters first, then buffers, each in PyTorch's order.
    want.sort_by_key(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var") || n.ends_with("tracked"));
    assert_eq!(ours, want);
    // Buffers are not trainable; parameters are.
    assert!(model.params.iter().all(|(_, t)| t.requires_grad()));
    assert!(model.buffers.iter().all(|(_, t)| !t.requires_grad()));
}

/// A model of the one layer, with its weight and bias set as the golden's.
fn batch_norm(spec: LayerSpec, weight: &[f32], bias: &[f32]) -> Sequential {
    let model = Sequential::new(&[spec], 0, Device::Cpu).unwrap();
    tch::no_grad(|| {
        model.params[0].1.shallow_clone().copy_(&Tensor::from_slice(weight));
        model.params[1].1.shallow_clone().copy_(&Tensor::from_slice(bias));
    });
    model
}

#[test]
fn batchnorm2d_train_then_eval_matches_pytorch() {
    let _rng = crate::rng::global_generator_lock();
    let g = golden().batchnorm2d;
    let model = batch_norm(LayerSpec::Batchnorm2d { features: 3 }, &[1.0, 0.5, 2.0], &[0.0, 0.1, -0.2]);
    let _ = model.forward(&pattern(&[4, 3, 2, 2], 1.0, -5.0), true).unwrap();
    let train_out = model.forward(&pattern(&[4, 3, 2, 2], 0.5, 1.0), true).unwrap();
    assert_close(&train_out, &g.train_out, "train_out");
    assert_close(&model.buffers[0].1, &g.running_mean, "running_mean");
    assert_close(&model.buffers[1].1, &g.running_var, "running_var");
    assert_eq!(model.buffers[2].1.int64_value(&[]), g.num_batches_tracked.unwrap());
    let eval_out = model.forward(&pattern(&[4, 3, 2, 2], 1.0, -5.0), false).unwrap();
    assert_close(&eval_out, &g.eval_out, "eval_out");
    // Eval mode leaves the statistics alone.
    assert_close(&model.buffers[0].1, &g.running_mean, "running_mean after eval");
    assert_eq!(model.buffers[2].1.int64_value(&[]), 2);
}

#[test]
fn batchnorm1d_on_sequences_matches_pytorch() {
    let _rng = crate::rng::global_generator_lock();
    let g = golden().batchnorm1d;
    let model = batch_norm(LayerSpec::Batchnorm1d { features: 2 }, &[1.0, 1.0], &[0.0, 0.0]);
    let x = pattern(&[3, 2, 5], 1.0, 0.0);
    assert_close(&model.forward(&x, true).unwrap(), &g.train_out, "train_out");
    assert_close(&model.buffers[0].1, &g.running_mean, "running_mean");
    assert_close(&model.buffers[1].1, &g.running_var, "running_var");
    assert_close(&model.forward(&x, false).unwrap(), &g.eval_out, "eval_out");
}

#[test]
fn output_shapes_follow_each_layer() {
    let _rng = crate::rng::global_generator_lock();
    let x = pattern(&[2, 64], 1.0, 0.0);
    let shape = |specs: Vec<LayerSpec>| {
        let mut all = vec![LayerSpec::Reshape { shape: vec![1, 8, 8] }];
        all.extend(specs);
        Sequential::new(&all, 0, Device::Cpu).unwrap().forward(&x, false).unwrap().size()
    };
    let conv =
        |i, o, stride| LayerSpec::Conv2d { in_channels: i, out_channels: o, kernel: 3, stride, padding: 1, bias: true };
    assert_eq!(shape(vec![LayerSpec::Avgpool2d { kernel: 2, stride: None }]), [2, 1, 4, 4]);
    assert_eq!(shape(vec![LayerSpec::Avgpool2d { kernel: 3, stride: Some(1) }]), [2, 1, 6, 6]);
    assert_eq!(shape(vec![conv(1, 5, 1), LayerSpec::GlobalAvgpool]), [2, 5]);
    assert_eq!(shape(vec![conv(1, 5, 1), LayerSpec::Batchnorm2d { features: 5 }]), [2, 5, 8, 8]);
    let projected = LayerSpec::Residual {
        layers: vec![conv(1, 6, 2)],
        projection: Some(ProjectionSpec { in_channels: 1, out_channels: 6, stride: 2, bias: true }),
    };
    assert_eq!(shape(vec![projected]), [2, 6, 4, 4]);
    assert_eq!(shape(vec![LayerSpec::Residual { layers: vec![LayerSpec::Relu], projection: None }]), [2, 1, 8, 8]);
}

/// `layers(x) + x` and `layers(x) + projection(x)`, computed by hand from the same weights.
#[test]
fn residual_adds_the_shortcut() {
    let _rng = crate::rng::global_generator_lock();
    let x = pattern(&[2, 2, 5, 5], 0.3, -1.0);
    let conv = LayerSpec::Conv2d { in_channels: 2, out_channels: 2, kernel: 3, stride: 1, padding: 1, bias: true };
    let identity =
        Sequential::new(&[LayerSpec::Residual { layers: vec![conv.clone()], projection: None }], 1, Device::Cpu)
            .unwrap();
    let p = |m: &Sequential, i: usize| m.params[i].1.shallow_clone();
    let inner = x.conv2d(&p(&identity, 0), Some(p(&identity, 1)), [1, 1], [1, 1], [1, 1], 1);
    assert!(identity.forward(&x, false).unwrap().equal(&(&inner + &x)));

    let projection = Some(ProjectionSpec { in_channels: 2, out_channels: 3, stride: 1, bias: false });
    let conv3 = LayerSpec::Conv2d { in_channels: 2, out_channels: 3, kernel: 3, stride: 1, padding: 1, bias: true };
    let projected =
        Sequential::new(&[LayerSpec::Residual { layers: vec![conv3], projection }], 1, Device::Cpu).unwrap();
    assert_eq!(
        projected.params.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["0.layers.0.weight", "0.layers.0.bias", "0.projection.weight"]
    );
    let inner = x.conv2d(&p(&projected, 0), Some(p(&projected, 1)), [1, 1], [1, 1], [1, 1], 1);
    let shortcut = x.conv2d(&p(&projected, 2), None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
    assert!(projected.forward(&x, false).unwrap().equal(&(inner + shortcut)));
}

/// The initialisation of layers that existed before BatchNorm and residuals is unchanged by
/// them: a BatchNorm draws no random numbers, so the conv after it gets the same values.
#[test]
fn batchnorm_draws_no_random_numbers() {
    let _rng = crate::rng::global_generator_lock();
    let conv = |i| LayerSpec::Conv2d { in_channels: i, out_channels: 4, kernel: 3, stride: 1, padding: 0, bias: true };
    let plain = Sequential::new(&[conv(1), conv(4)], 3, Device::Cpu).unwrap();
    let with_bn = Sequential::new(&[conv(1), LayerSpec::Batchnorm2d { features: 4 }, conv(4)], 3, Device::Cpu).unwrap();
    assert!(plain.params[2].1.equal(&with_bn.params[4].1));
}

/// The swapped `maxpool -> relu` gives bit-identical outputs and gradients to the layers
/// in the order the user wrote them (many ties at zero: half the conv outputs are negative),
/// inside a residual block too.
#[test]
fn pooling_before_relu_is_exact_forward_and_backward() {
    let _rng = crate::rng::global_generator_lock();
    let specs = [
        LayerSpec::Conv2d { in_channels: 1, out_channels: 4, kernel: 3, stride: 1, padding: 0, bias: true },
        LayerSpec::Relu,
        LayerSpec::Maxpool2d { kernel: 2 },
        LayerSpec::Flatten,
        LayerSpec::Linear { in_features: 4 * 13 * 13, out_features: 3, bias: true },
    ];
    let model = Sequential::new(&specs, 5, Device::Cpu).unwrap();
    assert!(matches!(model.layers[1], Layer::MaxPool2d(2)) && matches!(model.layers[2], Layer::Relu));
    let nested = Sequential::new(
        &[LayerSpec::Residual { layers: vec![LayerSpec::Relu, LayerSpec::Maxpool2d { kernel: 1 }], projection: None }],
        5,
        Device::Cpu,
    )
    .unwrap();
    let Layer::Residual { layers, .. } = &nested.layers[0] else { panic!("not a residual") };
    assert!(matches!(layers[0], Layer::MaxPool2d(1)) && matches!(layers[1], Layer::Relu));
    tch::manual_seed(9);
    // Rounded inputs: equal values inside pooling windows, so ties are exercised too.
    let x = (Tensor::randn([8, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0).round();
    let p = |i: usize| &model.params[i].1;
    let grads = |out: Tensor| -> Vec<Tensor> {
        for (_, t) in &model.params {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        (&out * &out).sum(Kind::Float).backward();
        model.params.iter().map(|(_, t)| t.grad().copy()).collect()
    };
    let reference = x
        .conv2d(p(0), Some(p(1)), [1, 1], [0, 0], [1, 1], 1)
        .relu()
        .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
        .flatten(1, -1)
        .linear(p(2), Some(p(3)));
    let swapped = model.forward(&x, true).unwrap();
    assert!(reference.equal(&swapped));
    let (a, b) = (grads(reference), grads(swapped));
    assert!(a.iter().zip(&b).all(|(a, b)| a.equal(b)), "gradients differ");
}

/// `model.weights` must hold the whole state dict: buffers too, as `load_state_dict(strict=True)`.
#[test]
fn weights_need_the_buffers() {
    let _rng = crate::rng::global_generator_lock();
    let specs = [LayerSpec::Batchnorm1d { features: 2 }];
    let mut model = Sequential::new(&specs, 0, Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let write = |named: &[(String, Tensor)]| {
        std::fs::write(&path, tensors::write(named, Default::default()).unwrap()).unwrap();
    };
    let mut state: Vec<(String, Tensor)> = vec![
        ("0.weight".into(), Tensor::from_slice(&[2.0f32, 3.0])),
        ("0.bias".into(), Tensor::from_slice(&[0.5f32, 0.25])),
        ("0.running_mean".into(), Tensor::from_slice(&[1.0f32, -1.0])),
        ("0.running_var".into(), Tensor::from_slice(&[4.0f32, 9.0])),
    ];
    write(&state);
    let err = model.load_weights(&path).unwrap_err().to_string();
    assert!(err.contains("missing tensor \"0.num_batches_tracked\""), "{err}");
    state.push(("0.num_batches_tracked".into(), Tensor::from(7i64)));
    write(&state);
    model.load_weights(&path).unwrap();
    assert_eq!(model.buffers[2].1.int64_value(&[]), 7);
    // Eval: (x - mean) / sqrt(var + eps) * weight + bias.
    let out = model.forward(&Tensor::from_slice(&[1.0f32, 2.0]).reshape([1, 2]), false).unwrap();
    assert_close(&out, &[0.5, (3.0 / (9.0f32 + 1e-5).sqrt()) * 3.0 + 0.25], "eval with loaded buffers");
}
