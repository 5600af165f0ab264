//! Channel pruning (`pruning.structure = "channel"`): which tensors a channel lives in, how
//! channels are scored and chosen, and the slim model that is left when they are cut out.
//!
//! A *channel space* is one set of channels that must be removed together: the output channels
//! of a conv2d (its filters) or the output neurons of a linear layer, and everything indexed by
//! them downstream, as Torch-Pruning's dependency groups: the layer's bias entries, the
//! batchnorm entries (weight, bias, running statistics) that normalise them, and the input
//! columns of the next conv2d/linear (through element-wise layers and pooling; through
//! `flatten`, channel c is the next linear's inputs `c*H*W .. (c+1)*H*W`). Channels added by a
//! residual sum are one space (both sides must lose the same channels). The model's input and
//! output (the classes), and whatever passes a `reshape`, are pinned: never pruned.
//!
//! Numerics, as for element-wise masks (`crate::mask`): a channel's score is the L2 (or L1)
//! norm of its weight row, averaged over the layers that produce the space (a residual sum has
//! two); exactly `keep_count(channels, sparsity)` channels are kept (so at least one), the
//! largest scores, ties to the lower index. Under global scope scores are divided by their
//! space's mean score before one exact-k selection over all spaces.

use crate::mask;
use crate::options::ChannelScore;
use crate::spec::{LayerSpec, ProjectionSpec};

/// The norm of each of the `rows` dim-0 slices of the row-major `w`, accumulated in f64.
pub fn channel_scores(w: &[f32], rows: usize, score: ChannelScore) -> Vec<f32> {
    if rows == 0 {
        return Vec::new();
    }
    let len = w.len() / rows;
    w.chunks(len.max(1))
        .take(rows)
        .map(|row| match score {
            ChannelScore::L1 => row.iter().map(|&v| f64::from(v).abs()).sum::<f64>() as f32,
            ChannelScore::L2 => row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt() as f32,
        })
        .collect()
}

/// Exactly `mask::keep_count(n, sparsity)` channels kept (at least one): the largest scores,
/// ties to the lower index; the same selection as `mask::element_mask` on the scores.
pub fn keep_channels(scores: &[f32], sparsity: f32) -> Vec<bool> {
    mask::element_mask(scores, sparsity).into_iter().map(|m| m != 0.0).collect()
}

/// Global scope over several spaces: scores divided by their space's mean, one exact-k
/// selection over all of them (ties to the lower position in space order), then every space
/// keeps at least one channel: a space left empty keeps its best channel and the lowest-scoring
/// kept channel of a space with two or more gives way (the last one among equals), so the total
/// stays exact.
pub fn keep_channels_global(spaces: &[Vec<f32>], sparsity: f32) -> Vec<Vec<bool>> {
    let normalised: Vec<Vec<f32>> = spaces
        .iter()
        .map(|scores| {
            let mean = scores.iter().map(|&s| f64::from(s)).sum::<f64>() / scores.len().max(1) as f64;
            if mean > 0.0 && mean.is_finite() {
                scores.iter().map(|&s| (f64::from(s) / mean) as f32).collect()
            } else {
                scores.clone()
            }
        })
        .collect();
    let slices: Vec<&[f32]> = normalised.iter().map(Vec::as_slice).collect();
    let mut keep: Vec<Vec<bool>> =
        mask::global_masks(&slices, sparsity).into_iter().map(|m| m.into_iter().map(|v| v != 0.0).collect()).collect();
    for s in 0..keep.len() {
        if keep[s].is_empty() || keep[s].iter().any(|&k| k) {
            continue;
        }
        keep[s][best(&normalised[s])] = true;
        // The weakest kept channel elsewhere (the last among equals) gives way.
        let mut weakest: Option<(usize, usize)> = None;
        for (t, kept) in keep.iter().enumerate() {
            if kept.iter().filter(|&&k| k).count() < 2 {
                continue;
            }
            for (c, _) in kept.iter().enumerate().filter(|(_, &k)| k) {
                let score = normalised[t][c];
                if weakest.is_none_or(|(wt, wc)| score <= normalised[wt][wc]) {
                    weakest = Some((t, c));
                }
            }
        }
        if let Some((t, c)) = weakest {
            keep[t][c] = false;
        }
    }
    keep
}

/// The first index of the largest score (NaN ranks highest, as in `crate::mask`).
fn best(scores: &[f32]) -> usize {
    let key = |v: f32| if v.is_nan() { u32::MAX } else { v.to_bits() & 0x7fff_ffff };
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if key(s) > key(scores[best]) {
            best = i;
        }
    }
    best
}

/// Zeroes, in the row-major `mask` of a tensor of `shape`, every slice along `dim` whose
/// channel (`index / group`) is not kept.
pub fn zero_removed(mask: &mut [f32], shape: &[usize], dim: usize, group: usize, keep: &[bool]) {
    let size = shape.get(dim).copied().unwrap_or(1);
    let inner: usize = shape.iter().skip(dim + 1).product();
    let group = group.max(1);
    for (i, chunk) in mask.chunks_mut(inner.max(1)).enumerate() {
        let channel = (i % size.max(1)) / group;
        if !keep.get(channel).copied().unwrap_or(true) {
            chunk.fill(0.0);
        }
    }
}

/// The 0/1 mask of a tensor of `shape` that removes the channels not kept along `dim`.
pub fn slice_mask(shape: &[usize], dim: usize, group: usize, keep: &[bool]) -> Vec<f32> {
    let mut mask = vec![1.0; shape.iter().product()];
    zero_removed(&mut mask, shape, dim, group, keep);
    mask
}

/// The indices along `dim` that survive: channel `c`'s `group` consecutive indices for every
/// kept `c`, ascending.
pub fn kept_indices(keep: &[bool], group: usize) -> Vec<i64> {
    let group = group.max(1);
    keep.iter()
        .enumerate()
        .filter(|(_, &k)| k)
        .flat_map(|(c, _)| (c * group..(c + 1) * group).map(|i| i as i64))
        .collect()
}

/// A tensor slice that is removed with a channel: along `dim`, index `j` is channel `j / group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub tensor: String,
    pub dim: usize,
    pub group: usize,
}

/// One set of channels removed together.
#[derive(Debug, Clone, PartialEq)]
pub struct Space {
    pub channels: usize,
    /// The weights whose dim-0 rows are these channels: what scores them.
    pub producers: Vec<String>,
    /// Every slice removed with a channel (producers' rows and biases, batchnorm entries and
    /// statistics, consumers' input columns).
    pub members: Vec<Member>,
    /// Why these channels are never removed, if they are not.
    pub pinned: Option<String>,
}

/// A layer with weights, as the report lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerLink {
    /// Module path: `0`, `3.layers.0`, `3.projection`.
    pub layer: String,
    /// `conv2d`, `linear`, `batchnorm`, `projection`.
    pub kind: &'static str,
    /// The tensor whose shape the report shows (the weight).
    pub weight: String,
    /// The space whose channels are this layer's outputs (a batchnorm's: its features).
    pub space: Option<usize>,
}

/// The channel spaces of a model and the layers they run through.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelGraph {
    pub spaces: Vec<Space>,
    pub layers: Vec<LayerLink>,
    /// Per parametrised layer in walk order, for rewriting the specs of the slim model.
    links: Vec<Link>,
}

/// A parametrised layer's input channels (space, group) and its output space.
type Link = (Act, Option<usize>);

/// The channels an activation carries: its space and how many consecutive features each
/// channel spans (1 before `flatten`; 0 after it until a consumer's size tells H*W). `None`:
/// not tracked (the model input, after a reshape).
type Act = Option<(usize, usize)>;

struct Builder {
    spaces: Vec<Space>,
    parent: Vec<usize>,
    layers: Vec<LayerLink>,
    links: Vec<Link>,
}

impl Builder {
    fn find(&mut self, mut s: usize) -> usize {
        while self.parent[s] != s {
            self.parent[s] = self.parent[self.parent[s]];
            s = self.parent[s];
        }
        s
    }

    fn pin(&mut self, s: usize, why: &str) {
        let root = self.find(s);
        self.spaces[root].pinned.get_or_insert_with(|| why.to_string());
    }

    /// A new space: the `out` output channels of the layer at `at` (`weight`, optional `bias`).
    fn produce(&mut self, at: &str, out: i64, bias: bool) -> usize {
        let weight = format!("{at}weight");
        let mut members = vec![Member { tensor: weight.clone(), dim: 0, group: 1 }];
        if bias {
            members.push(Member { tensor: format!("{at}bias"), dim: 0, group: 1 });
        }
        self.spaces.push(Space { channels: out.max(0) as usize, producers: vec![weight], members, pinned: None });
        self.parent.push(self.spaces.len() - 1);
        self.spaces.len() - 1
    }

    /// `tensors` index `act`'s channels along `dim` with `features` entries in all: records
    /// them as members and returns the activation with its group known. A size that does not
    /// divide into the channels (or a flattened input where a conv2d needs channels) pins the
    /// space: its mapping to these tensors is unknown.
    fn attach(&mut self, act: Act, tensors: &[String], dim: usize, features: i64, flat_ok: bool) -> Act {
        let (s, group) = act?;
        let root = self.find(s);
        let channels = self.spaces[root].channels as i64;
        let group = match group {
            0 if flat_ok && channels > 0 && features % channels == 0 => (features / channels) as usize,
            0 => 0,
            g => g,
        };
        if group == 0 || channels * group as i64 != features || (!flat_ok && group != 1) {
            self.pin(root, "its channels reach a layer whose inputs do not map to them");
            return None;
        }
        for t in tensors {
            self.spaces[root].members.push(Member { tensor: t.clone(), dim, group });
        }
        Some((root, group))
    }

    /// A residual sum: both sides' channels become one space.
    fn join(&mut self, a: Act, b: Act) -> Act {
        match (a, b) {
            (Some((x, gx)), Some((y, gy))) => {
                // The older space stays the root, so spaces keep the order of their first layer.
                let (x, y) = (self.find(x).min(self.find(y)), self.find(x).max(self.find(y)));
                if gx != gy || self.spaces[x].channels != self.spaces[y].channels {
                    self.pin(x, "a residual sum adds it to channels laid out differently");
                    self.pin(y, "a residual sum adds it to channels laid out differently");
                    return None;
                }
                if x != y {
                    self.parent[y] = x;
                    let other = std::mem::replace(
                        &mut self.spaces[y],
                        Space { channels: 0, producers: vec![], members: vec![], pinned: None },
                    );
                    let into = &mut self.spaces[x];
                    into.producers.extend(other.producers);
                    into.members.extend(other.members);
                    if into.pinned.is_none() {
                        into.pinned = other.pinned;
                    }
                }
                Some((x, gx))
            }
            (Some((s, _)), None) | (None, Some((s, _))) => {
                self.pin(s, "a residual sum adds it to channels that are not tracked (the model input or a reshape)");
                None
            }
            (None, None) => None,
        }
    }

    fn link(&mut self, layer: &str, kind: &'static str, input: Act, output: Option<usize>, space: Option<usize>) {
        let layer = layer.trim_end_matches('.').to_string();
        self.layers.push(LayerLink { weight: format!("{layer}.weight"), layer, kind, space });
        self.links.push((input, output));
    }

    fn walk(&mut self, prefix: &str, specs: &[LayerSpec], mut act: Act) -> Act {
        for (i, spec) in specs.iter().enumerate() {
            let at = format!("{prefix}{i}.");
            act = match *spec {
                LayerSpec::Linear { in_features, out_features, bias } => {
                    let input = self.attach(act, &[format!("{at}weight")], 1, in_features, true);
                    let out = self.produce(&at, out_features, bias);
                    self.link(&at, "linear", input, Some(out), Some(out));
                    Some((out, 1))
                }
                LayerSpec::Conv2d { in_channels, out_channels, bias, .. } => {
                    let input = self.attach(act, &[format!("{at}weight")], 1, in_channels, false);
                    let out = self.produce(&at, out_channels, bias);
                    self.link(&at, "conv2d", input, Some(out), Some(out));
                    Some((out, 1))
                }
                LayerSpec::Batchnorm1d { features } | LayerSpec::Batchnorm2d { features } => {
                    let tensors: Vec<String> =
                        ["weight", "bias", "running_mean", "running_var"].iter().map(|t| format!("{at}{t}")).collect();
                    let flat_ok = matches!(spec, LayerSpec::Batchnorm1d { .. });
                    let input = self.attach(act, &tensors, 0, features, flat_ok);
                    self.link(&at, "batchnorm", input, None, input.map(|(s, _)| s));
                    input
                }
                LayerSpec::Relu
                | LayerSpec::Tanh
                | LayerSpec::Sigmoid
                | LayerSpec::Dropout { .. }
                | LayerSpec::Maxpool2d { .. }
                | LayerSpec::Avgpool2d { .. }
                | LayerSpec::GlobalAvgpool => act,
                // [C, H, W] -> [C*H*W]: channel c spans H*W features, known at the next layer.
                LayerSpec::Flatten => act.map(|(s, g)| (s, if g == 1 { 0 } else { g })),
                LayerSpec::Reshape { .. } => {
                    if let Some((s, _)) = act {
                        self.pin(s, "it passes a reshape");
                    }
                    None
                }
                LayerSpec::Residual { ref layers, ref projection } => {
                    let body = self.walk(&format!("{at}layers."), layers, act);
                    let shortcut = match projection {
                        Some(ProjectionSpec { in_channels, out_channels, bias, .. }) => {
                            let p = format!("{at}projection.");
                            let input = self.attach(act, &[format!("{p}weight")], 1, *in_channels, false);
                            let out = self.produce(&p, *out_channels, *bias);
                            self.link(&p, "projection", input, Some(out), Some(out));
                            Some((out, 1))
                        }
                        None => act,
                    };
                    self.join(body, shortcut)
                }
            };
        }
        act
    }

    /// Merged spaces renumbered in creation order; links and layers follow.
    fn finish(mut self) -> ChannelGraph {
        let roots: Vec<usize> = (0..self.spaces.len()).map(|s| self.find(s)).collect();
        let mut id = vec![usize::MAX; self.spaces.len()];
        let mut spaces = Vec::new();
        for s in 0..self.spaces.len() {
            if roots[s] == s {
                id[s] = spaces.len();
                spaces.push(std::mem::replace(
                    &mut self.spaces[s],
                    Space { channels: 0, producers: vec![], members: vec![], pinned: None },
                ));
            }
        }
        let map = |s: usize| id[roots[s]];
        let links = self.links.iter().map(|&(i, o)| (i.map(|(s, g)| (map(s), g)), o.map(map))).collect();
        let layers = self.layers.into_iter().map(|l| LayerLink { space: l.space.map(map), ..l }).collect();
        ChannelGraph { spaces, layers, links }
    }
}

impl ChannelGraph {
    /// The spaces of a built-in `model.sequential` (parameter names as PyTorch's module).
    pub fn of_sequential(specs: &[LayerSpec]) -> ChannelGraph {
        let mut b = Builder { spaces: vec![], parent: vec![], layers: vec![], links: vec![] };
        if let Some((s, _)) = b.walk("", specs, None) {
            b.pin(s, "the model's output: its channels are the classes");
        }
        b.finish()
    }

    /// A user model's spaces, where no layer graph is known: each candidate weight (rank >= 2,
    /// in `params` order) is its own space with its `.bias` of matching length; the last one is
    /// taken for the classifier and pinned. Nothing downstream is known, so masks zero the
    /// channels but no tensor can be cut.
    pub fn of_tensors(params: &[(String, Vec<usize>)], candidate: impl Fn(&str) -> bool) -> ChannelGraph {
        let last = params.iter().rposition(|(_, shape)| shape.len() >= 2);
        let mut spaces = Vec::new();
        let mut layers = Vec::new();
        for (i, (name, shape)) in params.iter().enumerate() {
            if shape.len() < 2 || !candidate(name) {
                continue;
            }
            let mut members = vec![Member { tensor: name.clone(), dim: 0, group: 1 }];
            if let Some(prefix) = name.strip_suffix("weight") {
                let bias = format!("{prefix}bias");
                if params.iter().any(|(n, s)| *n == bias && s[..] == [shape[0]]) {
                    members.push(Member { tensor: bias, dim: 0, group: 1 });
                }
            }
            let pinned = (Some(i) == last).then(|| {
                "the model's last weight: taken for the classifier, whose outputs are the classes".to_string()
            });
            layers.push(LayerLink {
                layer: name.clone(),
                kind: "tensor",
                weight: name.clone(),
                space: Some(spaces.len()),
            });
            spaces.push(Space { channels: shape[0], producers: vec![name.clone()], members, pinned });
        }
        ChannelGraph { spaces, layers, links: vec![] }
    }

    /// The layer specs of the slim model: every conv2d/linear/batchnorm/projection sized to the
    /// channels `kept[space]` of its spaces.
    pub fn slim_layers(&self, specs: &[LayerSpec], kept: &[usize]) -> Vec<LayerSpec> {
        let mut links = self.links.iter();
        rewrite(specs, &mut links, kept)
    }
}

fn rewrite<'a>(specs: &[LayerSpec], links: &mut impl Iterator<Item = &'a Link>, kept: &[usize]) -> Vec<LayerSpec> {
    let size = |act: Act, dense: i64| match act {
        Some((s, g)) => (kept[s] * g.max(1)) as i64,
        None => dense,
    };
    let out = |space: Option<usize>, dense: i64| space.map_or(dense, |s| kept[s] as i64);
    specs
        .iter()
        .map(|spec| match spec.clone() {
            LayerSpec::Linear { in_features, out_features, bias } => {
                let &(input, output) = links.next().expect("one link per linear");
                LayerSpec::Linear {
                    in_features: size(input, in_features),
                    out_features: out(output, out_features),
                    bias,
                }
            }
            LayerSpec::Conv2d { in_channels, out_channels, kernel, stride, padding, bias } => {
                let &(input, output) = links.next().expect("one link per conv2d");
                LayerSpec::Conv2d {
                    in_channels: size(input, in_channels),
                    out_channels: out(output, out_channels),
                    kernel,
                    stride,
                    padding,
                    bias,
                }
            }
            LayerSpec::Batchnorm1d { features } => {
                let &(input, _) = links.next().expect("one link per batchnorm");
                LayerSpec::Batchnorm1d { features: size(input, features) }
            }
            LayerSpec::Batchnorm2d { features } => {
                let &(input, _) = links.next().expect("one link per batchnorm");
                LayerSpec::Batchnorm2d { features: size(input, features) }
            }
            LayerSpec::Residual { layers, projection } => {
                let layers = rewrite(&layers, links, kept);
                let projection = projection.map(|p| {
                    let &(input, output) = links.next().expect("one link per projection");
                    ProjectionSpec {
                        in_channels: size(input, p.in_channels),
                        out_channels: out(output, p.out_channels),
                        ..p
                    }
                });
                LayerSpec::Residual { layers, projection }
            }
            other => other,
        })
        .collect()
}

/// FLOPs of one sample's forward pass through `specs` with per-sample input `shape`: 2 x the
/// multiply-accumulates of conv2d and linear layers (the other layers are not counted, as in
/// the usual FLOPs tables). `None` if a layer does not fit the shape.
pub fn flops(specs: &[LayerSpec], shape: &[i64]) -> Option<u64> {
    let mut total = 0u64;
    walk_flops(specs, shape.to_vec(), &mut total)?;
    Some(total)
}

fn walk_flops(specs: &[LayerSpec], mut shape: Vec<i64>, total: &mut u64) -> Option<Vec<i64>> {
    let window = |size: i64, kernel: i64, stride: i64, padding: i64| (size + 2 * padding - kernel) / stride.max(1) + 1;
    for spec in specs {
        shape = match *spec {
            LayerSpec::Linear { in_features, out_features, .. } => {
                let (&last, lead) = shape.split_last()?;
                if last != in_features {
                    return None;
                }
                let rows: i64 = lead.iter().product();
                *total += 2 * (rows * in_features * out_features) as u64;
                let mut next = lead.to_vec();
                next.push(out_features);
                next
            }
            LayerSpec::Conv2d { in_channels, out_channels, kernel, stride, padding, .. } => {
                let [c, h, w] = shape[..] else { return None };
                if c != in_channels {
                    return None;
                }
                let (h, w) = (window(h, kernel, stride, padding), window(w, kernel, stride, padding));
                *total += 2 * (out_channels * in_channels * kernel * kernel * h * w) as u64;
                vec![out_channels, h, w]
            }
            LayerSpec::Maxpool2d { kernel } => pool(&shape, kernel, kernel)?,
            LayerSpec::Avgpool2d { kernel, stride } => pool(&shape, kernel, stride.unwrap_or(kernel))?,
            LayerSpec::GlobalAvgpool => vec![*shape.first()?],
            LayerSpec::Flatten => vec![shape.iter().product()],
            LayerSpec::Reshape { shape: ref to } => to.clone(),
            LayerSpec::Residual { ref layers, ref projection } => {
                let body = walk_flops(layers, shape.clone(), total)?;
                if let Some(p) = projection {
                    let [c, h, w] = shape[..] else { return None };
                    let (h, w) = (window(h, 1, p.stride, 0), window(w, 1, p.stride, 0));
                    *total += 2 * (p.out_channels * c * h * w) as u64;
                }
                body
            }
            LayerSpec::Relu
            | LayerSpec::Tanh
            | LayerSpec::Sigmoid
            | LayerSpec::Dropout { .. }
            | LayerSpec::Batchnorm1d { .. }
            | LayerSpec::Batchnorm2d { .. } => shape,
        };
    }
    Some(shape)
}

fn pool(shape: &[i64], kernel: i64, stride: i64) -> Option<Vec<i64>> {
    let [c, h, w] = shape[..] else { return None };
    let out = |size: i64| (size - kernel) / stride.max(1) + 1;
    Some(vec![c, out(h), out(w)])
}

#[cfg(test)]
#[path = "channels_tests.rs"]
mod tests;
