//! The rules of `model.sequential`: each layer's own fields, and whether the layers chain.
//!
//! Chaining is checked on the per-sample shape (no batch dimension) as far as the spec tells
//! it: the built-in data sets fix the input shape, a data file does not, so then the first
//! layers only fix what they produce (a conv2d's channels, a linear's features). A mismatch
//! that needs an unknown size (a spatial size fed from a data file) is left to the worker's
//! dry run, which fails the job with libtorch's reason.

use std::fmt::Write as _;

use super::check::{element_count, Errors};
use super::MAX_ELEMENTS;
use crate::options::BuiltinData;
use crate::spec::{DataSpec, LayerSpec, ProjectionSpec};

/// Deepest nesting of `residual` blocks accepted: deeper is a generated mistake, not a model.
pub const MAX_RESIDUAL_DEPTH: usize = 8;

/// What validation knows of a per-sample shape: `None` when even the rank is unknown,
/// otherwise one entry per dimension, `None` where that size is unknown.
type Shape = Option<Vec<Option<i64>>>;

/// The per-sample input shape the data section fixes, if it does.
pub(super) fn input_shape(data: Option<&DataSpec>) -> Shape {
    let data = data?;
    match data.builtin.as_deref()?.parse::<BuiltinData>().ok()? {
        BuiltinData::Digits => Some(vec![Some(crate::datasets::DIGITS_FEATURES)]),
        BuiltinData::Synthetic => {
            let shape = data.shape.as_ref()?;
            shape.iter().all(|&d| d >= 1).then(|| shape.iter().map(|&d| Some(d)).collect())
        }
    }
}

pub(super) fn check_sequential(e: &mut Errors, layers: &[LayerSpec], input: Shape) {
    e.check(!layers.is_empty(), "model.sequential", || "must list at least one layer".to_string());
    chain(e, "model.sequential", layers, input, 0);
}

/// Checks `layers` (at `at[i]`) in order and returns the shape they produce.
fn chain(e: &mut Errors, at: &str, layers: &[LayerSpec], mut shape: Shape, depth: usize) -> Shape {
    for (i, layer) in layers.iter().enumerate() {
        shape = check_layer(e, &format!("{at}[{i}]"), layer, shape, depth);
    }
    shape
}

/// Checks one layer's fields and its input; returns its output shape (unknown after an error
/// that leaves it undefined, so one mistake is reported once).
fn check_layer(e: &mut Errors, at: &str, layer: &LayerSpec, shape: Shape, depth: usize) -> Shape {
    match *layer {
        LayerSpec::Linear { in_features, out_features, .. } => {
            e.at_least(format!("{at}.in"), in_features, 1);
            e.at_least(format!("{at}.out"), out_features, 1);
            check_weight_size(e, at, &[out_features, in_features]);
            let mut dims = shape?;
            if let Some(last) = dims.last_mut() {
                if let Some(got) = *last {
                    e.check(in_features < 1 || got == in_features, format!("{at}.in"), || {
                        format!("is {in_features} but the previous layer gives {got} features")
                    });
                }
                *last = Some(out_features);
            }
            Some(dims)
        }
        LayerSpec::Conv2d { in_channels, out_channels, kernel, stride, padding, .. } => {
            e.at_least(format!("{at}.in"), in_channels, 1);
            e.at_least(format!("{at}.out"), out_channels, 1);
            e.at_least(format!("{at}.kernel"), kernel, 1);
            e.at_least(format!("{at}.stride"), stride, 1);
            e.at_least(format!("{at}.padding"), padding, 0);
            check_weight_size(e, at, &[out_channels, in_channels, kernel, kernel]);
            let [c, h, w] = image(e, at, "conv2d", shape)?;
            check_channels(e, &format!("{at}.in"), in_channels, c);
            let (h, w) = window(e, at, [h, w], kernel, stride, padding)?;
            Some(vec![Some(out_channels), h, w])
        }
        LayerSpec::Maxpool2d { kernel } => {
            e.at_least(format!("{at}.kernel"), kernel, 1);
            // max_pool2d also takes other ranks: only a [C, H, W] input has a known output.
            match shape {
                Some(dims) if dims.len() == 3 => {
                    let (h, w) = window(e, at, [dims[1], dims[2]], kernel, kernel, 0)?;
                    Some(vec![dims[0], h, w])
                }
                _ => None,
            }
        }
        LayerSpec::Avgpool2d { kernel, stride } => {
            e.at_least(format!("{at}.kernel"), kernel, 1);
            if let Some(stride) = stride {
                e.at_least(format!("{at}.stride"), stride, 1);
            }
            let [c, h, w] = image(e, at, "avgpool2d", shape)?;
            let (h, w) = window(e, at, [h, w], kernel, stride.unwrap_or(kernel), 0)?;
            Some(vec![c, h, w])
        }
        LayerSpec::GlobalAvgpool => {
            let [c, _, _] = image(e, at, "global_avgpool", shape)?;
            Some(vec![c])
        }
        LayerSpec::Batchnorm1d { features } => {
            e.at_least(format!("{at}.features"), features, 1);
            check_weight_size(e, at, &[features]);
            if let Some(dims) = &shape {
                if !(1..=2).contains(&dims.len()) {
                    e.push(at, format!("batchnorm1d needs [features] or [features, length] per sample, the previous layer gives {}", show(dims)));
                    return None;
                }
                check_channels(e, &format!("{at}.features"), features, dims[0]);
            }
            shape
        }
        LayerSpec::Batchnorm2d { features } => {
            e.at_least(format!("{at}.features"), features, 1);
            check_weight_size(e, at, &[features]);
            let [c, h, w] = image(e, at, "batchnorm2d", shape)?;
            check_channels(e, &format!("{at}.features"), features, c);
            Some(vec![Some(features), h, w])
        }
        LayerSpec::Dropout { p } => {
            e.fraction(format!("{at}.p"), p);
            shape
        }
        LayerSpec::Reshape { shape: ref target } => {
            check_reshape(e, at, target);
            reshape(e, at, &shape?, target)
        }
        LayerSpec::Flatten => {
            let n = shape.and_then(|dims| dims.into_iter().try_fold(1i64, |n, d| n.checked_mul(d?)));
            Some(vec![n])
        }
        LayerSpec::Relu | LayerSpec::Tanh | LayerSpec::Sigmoid => shape,
        LayerSpec::Residual { ref layers, ref projection } => {
            check_residual(e, at, layers, projection.as_ref(), shape, depth)
        }
    }
}

fn check_residual(
    e: &mut Errors,
    at: &str,
    layers: &[LayerSpec],
    projection: Option<&ProjectionSpec>,
    input: Shape,
    depth: usize,
) -> Shape {
    if depth >= MAX_RESIDUAL_DEPTH {
        e.push(at, format!("residual blocks may be nested at most {MAX_RESIDUAL_DEPTH} deep"));
        return None;
    }
    e.check(!layers.is_empty(), format!("{at}.layers"), || "must list at least one layer".to_string());
    let inner = chain(e, &format!("{at}.layers"), layers, input.clone(), depth + 1);
    let Some(p) = projection else {
        // The identity shortcut: the layers must give back the input's shape.
        if let (Some(a), Some(b)) = (&input, &inner) {
            e.check(compatible(a, b), at, || {
                format!(
                    "its layers turn {} into {}, but without a projection they must keep the input's shape \
                     (a projection = {{ in = .., out = .. }} adapts the shortcut when channels change)",
                    show(a),
                    show(b)
                )
            });
        }
        return merge(input, inner);
    };
    let at = format!("{at}.projection");
    e.at_least(format!("{at}.in"), p.in_channels, 1);
    e.at_least(format!("{at}.out"), p.out_channels, 1);
    e.at_least(format!("{at}.stride"), p.stride, 1);
    check_weight_size(e, &at, &[p.out_channels, p.in_channels]);
    let [c, h, w] = image(e, &at, "a projection (a 1x1 conv2d)", input)?;
    check_channels(e, &format!("{at}.in"), p.in_channels, c);
    let (h, w) = window(e, &at, [h, w], 1, p.stride, 0)?;
    let shortcut = vec![Some(p.out_channels), h, w];
    let Some(inner) = inner else { return Some(shortcut) };
    if inner.len() != 3 {
        e.push(
            &at,
            format!("gives {} but the layers give {}: they must match to be added", show(&shortcut), show(&inner)),
        );
        return None;
    }
    if let Some(c) = inner[0] {
        e.check(c == p.out_channels || p.out_channels < 1, format!("{at}.out"), || {
            format!("is {} but the residual's layers give {c} channels", p.out_channels)
        });
    }
    e.check(compatible(&shortcut[1..], &inner[1..]), format!("{at}.stride"), || {
        format!(
            "the shortcut gives {} but the residual's layers give {}: the stride must shrink the input as the layers do",
            show(&shortcut),
            show(&inner)
        )
    });
    merge(Some(shortcut), Some(inner))
}

/// Two shapes that can be added: the same rank, and no dimension known to differ.
fn compatible(a: &[Option<i64>], b: &[Option<i64>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.zip(*y).is_none_or(|(x, y)| x == y))
}

/// The shape of a sum, knowing what either operand tells.
fn merge(a: Shape, b: Shape) -> Shape {
    match (a, b) {
        (Some(a), Some(b)) if a.len() == b.len() => Some(a.iter().zip(&b).map(|(x, y)| x.or(*y)).collect()),
        (Some(_), Some(_)) => None,
        (a, b) => a.or(b),
    }
}

/// A `[channels, height, width]` input (rank unknown counts as one, sizes unknown), or an error.
fn image(e: &mut Errors, at: &str, what: &str, shape: Shape) -> Option<[Option<i64>; 3]> {
    match shape {
        None => Some([None; 3]),
        Some(dims) => match <[Option<i64>; 3]>::try_from(dims.as_slice()) {
            Ok(dims) => Some(dims),
            Err(_) => {
                e.push(
                    at,
                    format!(
                        "{what} needs [channels, height, width] per sample, the previous layer gives {}",
                        show(&dims)
                    ),
                );
                None
            }
        },
    }
}

fn check_channels(e: &mut Errors, field: &str, want: i64, got: Option<i64>) {
    if let Some(got) = got {
        e.check(want < 1 || got == want, field, || format!("is {want} but the previous layer gives {got} channels"));
    }
}

/// The output size of a sliding window over `[h, w]` (PyTorch's floor rule), or an error when
/// the window is larger than the padded input.
fn window(
    e: &mut Errors,
    at: &str,
    sizes: [Option<i64>; 2],
    kernel: i64,
    stride: i64,
    padding: i64,
) -> Option<(Option<i64>, Option<i64>)> {
    if kernel < 1 || stride < 1 || padding < 0 {
        return None;
    }
    let mut out = [None; 2];
    for (o, size) in out.iter_mut().zip(sizes) {
        let Some(size) = size else { continue };
        let padded = size + 2 * padding;
        if padded < kernel {
            e.push(format!("{at}.kernel"), format!("{kernel} is larger than the input's {size} (padded: {padded})"));
            return None;
        }
        *o = Some((padded - kernel) / stride + 1);
    }
    Some((out[0], out[1]))
}

/// The output of `reshape` to `target` (-1 inferred), checking the element count when known.
fn reshape(e: &mut Errors, at: &str, dims: &[Option<i64>], target: &[i64]) -> Shape {
    if target.is_empty() || target.iter().any(|&d| d < 1 && d != -1) || target.iter().filter(|&&d| d == -1).count() > 1
    {
        return None; // reported by check_reshape
    }
    let total = dims.iter().try_fold(1i64, |n, d| n.checked_mul((*d)?));
    let known = element_count(&target.iter().map(|&d| d.max(1)).collect::<Vec<_>>())?;
    let inferred = target.contains(&-1);
    if let Some(total) = total {
        let fits = if inferred { total % known == 0 } else { total == known };
        e.check(fits, format!("{at}.shape"), || {
            format!(
                "{} does not fit the previous layer's {} values per sample ({})",
                show_ints(target),
                total,
                show(dims)
            )
        });
        if !fits {
            return None;
        }
    }
    Some(target.iter().map(|&d| if d == -1 { total.map(|t| t / known) } else { Some(d) }).collect())
}

/// A built-in layer's weight must stay under [`MAX_ELEMENTS`] (sizes below 1 are reported on
/// their own field).
fn check_weight_size(e: &mut Errors, at: &str, dims: &[i64]) {
    if dims.iter().all(|&d| d >= 1) {
        let ok = element_count(dims).is_some_and(|n| n <= MAX_ELEMENTS);
        e.check(ok, at, || format!("its weight of shape {dims:?} has more than {MAX_ELEMENTS} elements"));
    }
}

fn check_reshape(e: &mut Errors, at: &str, shape: &[i64]) {
    let field = format!("{at}.shape");
    e.check(!shape.is_empty(), &field, || "must list at least one dimension".to_string());
    let inferred = shape.iter().filter(|&&d| d == -1).count();
    e.check(inferred <= 1, &field, || format!("at most one dimension may be -1 (got {inferred})"));
    for (j, &d) in shape.iter().enumerate() {
        e.check(d >= 1 || d == -1, format!("{field}[{j}]"), || {
            format!("must be >= 1, or -1 to infer the dimension (got {d})")
        });
    }
}

/// `[16, ?, ?]`: a per-sample shape, `?` where unknown.
fn show(dims: &[Option<i64>]) -> String {
    let mut s = String::from("[");
    for (i, d) in dims.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        match d {
            Some(d) => {
                let _ = write!(s, "{d}");
            }
            None => s.push('?'),
        }
    }
    s.push(']');
    s
}

fn show_ints(dims: &[i64]) -> String {
    show(&dims.iter().map(|&d| Some(d)).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(i: i64, o: i64, k: i64, padding: i64) -> LayerSpec {
        LayerSpec::Conv2d { in_channels: i, out_channels: o, kernel: k, stride: 1, padding, bias: true }
    }

    fn out(layers: &[LayerSpec], input: Shape) -> (Shape, Vec<String>) {
        let mut e = Errors::default();
        let shape = chain(&mut e, "m", layers, input, 0);
        (shape, e.into_fields())
    }

    #[test]
    fn shapes_flow_through_every_layer() {
        let layers = [
            LayerSpec::Reshape { shape: vec![1, 8, 8] },
            conv(1, 8, 3, 1),
            LayerSpec::Batchnorm2d { features: 8 },
            LayerSpec::Avgpool2d { kernel: 2, stride: None },
            LayerSpec::Residual {
                layers: vec![conv(8, 16, 3, 1), LayerSpec::Batchnorm2d { features: 16 }],
                projection: Some(ProjectionSpec { in_channels: 8, out_channels: 16, stride: 1, bias: false }),
            },
            LayerSpec::Avgpool2d { kernel: 3, stride: Some(1) },
            LayerSpec::GlobalAvgpool,
            LayerSpec::Batchnorm1d { features: 16 },
        ];
        assert_eq!(out(&layers, Some(vec![Some(64)])), (Some(vec![Some(16)]), vec![]));
        // Without the data's shape only the channels are known.
        assert_eq!(out(&layers[1..4], None), (Some(vec![Some(8), None, None]), vec![]));
    }

    #[test]
    fn mismatches_name_the_field() {
        let input = Some(vec![Some(1), Some(8), Some(8)]);
        let (_, e) = out(&[conv(1, 8, 3, 1), LayerSpec::Batchnorm2d { features: 4 }], input.clone());
        assert_eq!(e, ["m[1].features"]);
        let identity = LayerSpec::Residual { layers: vec![conv(8, 8, 3, 1), conv(4, 8, 3, 0)], projection: None };
        let (_, e) = out(&[conv(1, 8, 3, 1), identity], input.clone());
        assert_eq!(e, ["m[1].layers[1].in", "m[1]"]);
        let p = |i, o, stride| Some(ProjectionSpec { in_channels: i, out_channels: o, stride, bias: true });
        let block = |projection| LayerSpec::Residual { layers: vec![conv(1, 4, 3, 1)], projection };
        assert_eq!(out(&[block(p(1, 4, 1))], input.clone()), (Some(vec![Some(4), Some(8), Some(8)]), vec![]));
        assert_eq!(out(&[block(p(2, 4, 1))], input.clone()).1, ["m[0].projection.in"]);
        assert_eq!(out(&[block(p(1, 5, 1))], input.clone()).1, ["m[0].projection.out"]);
        assert_eq!(out(&[block(p(1, 4, 2))], input.clone()).1, ["m[0].projection.stride"]);
        assert_eq!(out(&[block(None)], input.clone()).1, ["m[0]"]);
        assert_eq!(out(&[LayerSpec::GlobalAvgpool], Some(vec![Some(64)])).1, ["m[0]"]);
        assert_eq!(out(&[LayerSpec::Batchnorm1d { features: 3 }], input.clone()).1, ["m[0]"]);
        assert_eq!(out(&[LayerSpec::Avgpool2d { kernel: 9, stride: None }], input.clone()).1, ["m[0].kernel"]);
        let linear = |i, o| LayerSpec::Linear { in_features: i, out_features: o, bias: true };
        assert_eq!(out(&[linear(64, 10), linear(11, 2)], Some(vec![Some(64)])).1, ["m[1].in"]);
        assert_eq!(out(&[LayerSpec::Reshape { shape: vec![1, 9, 8] }], Some(vec![Some(64)])).1, ["m[0].shape"]);
    }

    #[test]
    fn nesting_is_bounded() {
        let mut layer = LayerSpec::Relu;
        for _ in 0..=MAX_RESIDUAL_DEPTH {
            layer = LayerSpec::Residual { layers: vec![layer], projection: None };
        }
        let (_, e) = out(&[layer], None);
        assert_eq!(e.len(), 1);
        assert!(e[0].ends_with("[0].layers[0]"), "{e:?}");
    }
}
