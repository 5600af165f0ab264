//! How a parameter is pruned: element-wise, in blocks, or m zeros in every n.
//!
//! The job file spells the method with three fields (`block_size`, `block_pooling`, `m_by_n`,
//! top-level and per override); validation resolves them once into a [`PruningMethod`]. Each
//! variant owns its mask computation (over `crate::mask`) and its rule for when masks are
//! recomputed, so the engine dispatches on the variant instead of re-reading the fields.

use crate::channels;
use crate::mask;
use crate::options::{BlockPooling, ChannelScore};
use crate::schedule::Schedule;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruningMethod {
    /// Single weights ranked by `|w|` (`block_size = [1, 1]`, no `m_by_n`).
    ElementWise,
    /// Non-overlapping `[rows, cols]` blocks of a 2-D weight, ranked by pooled `|w|`.
    Block { size: [usize; 2], pooling: BlockPooling },
    /// `m` zeros in every group of `n` consecutive input channels; ignores the schedule.
    MByN { m: usize, n: usize },
    /// Whole output channels (dim 0 slices), ranked by the norm of their weights
    /// (`pruning.structure = "channel"`). Alone, [`Self::mask`] zeroes a tensor's own rows; a
    /// built-in model's channels also carry the tensors that depend on them (`crate::channels`).
    Channel { score: ChannelScore },
}

impl PruningMethod {
    /// The method the wire fields ask for: `m_by_n` wins, then a block size other than
    /// `[1, 1]`; otherwise element-wise (`pooling` only matters for blocks). `None` for a
    /// negative size, which validation reports on its own field.
    pub fn resolve(block_size: [i64; 2], pooling: BlockPooling, m_by_n: Option<[i64; 2]>) -> Option<PruningMethod> {
        let size = |v: i64| usize::try_from(v).ok();
        Some(match (m_by_n, block_size) {
            (Some([m, n]), _) => PruningMethod::MByN { m: size(m)?, n: size(n)? },
            (None, [1, 1]) => PruningMethod::ElementWise,
            (None, [rows, cols]) => PruningMethod::Block { size: [size(rows)?, size(cols)?], pooling },
        })
    }

    /// tfmot's rule for recomputing a mask before the batch of training step `step`
    /// (1-based): on the schedule's pruning steps, except m-by-n masks, computed once at step 1.
    pub fn recompute_at(&self, schedule: &Schedule, step: i64) -> bool {
        match self {
            PruningMethod::MByN { .. } => step == 1,
            PruningMethod::ElementWise | PruningMethod::Block { .. } | PruningMethod::Channel { .. } => {
                schedule.should_prune(step)
            }
        }
    }

    /// The first training step >= 1 at which [`Self::recompute_at`] holds, `i64::MAX` if none
    /// does (a schedule that ends before its first pruning step).
    pub fn first_recompute_step(&self, schedule: &Schedule) -> i64 {
        match self {
            PruningMethod::MByN { .. } => 1,
            PruningMethod::ElementWise | PruningMethod::Block { .. } | PruningMethod::Channel { .. } => {
                let begin = schedule.begin_step().max(1);
                let freq = schedule.frequency().max(1);
                let offset = (begin - schedule.begin_step()).rem_euclid(freq);
                let first = if offset == 0 { begin } else { begin + freq - offset };
                if schedule.end_step() >= 0 && first > schedule.end_step() {
                    i64::MAX
                } else {
                    first
                }
            }
        }
    }

    /// The 0/1 mask of the row-major weight `w` of shape `shape` at `sparsity` (ignored by
    /// m-by-n). Block masks need a 2-D shape ([`Self::check_shape`]).
    pub fn mask(&self, w: &[f32], shape: &[usize], sparsity: f32) -> Vec<f32> {
        match *self {
            PruningMethod::ElementWise => mask::element_mask(w, sparsity),
            PruningMethod::Block { size, pooling } => mask::block_mask(w, shape[0], shape[1], size, pooling, sparsity),
            PruningMethod::MByN { m, n } => mask::m_by_n_mask(w, shape, m, n),
            PruningMethod::Channel { score } => {
                let rows = shape.first().copied().unwrap_or(1);
                let keep = channels::keep_channels(&channels::channel_scores(w, rows, score), sparsity);
                channels::slice_mask(shape, 0, 1, &keep)
            }
        }
    }

    /// Why the parameter `name` of shape `shape` cannot be pruned this way, if it cannot: blocks
    /// need 2-D weights (as tfmot), m-by-n groups weights of rank >= 2.
    pub fn check_shape(&self, name: &str, shape: &[usize]) -> Result<(), String> {
        match *self {
            PruningMethod::Block { size, .. } if shape.len() != 2 => Err(format!(
                "pruning.block_size {size:?} needs 2-D weights (as tfmot), but {name} has shape {shape:?}: exclude it or override its block_size"
            )),
            PruningMethod::MByN { m, n } if shape.len() < 2 => Err(format!(
                "pruning.m_by_n [{m}, {n}] needs weights of rank >= 2, but {name} has shape {shape:?}"
            )),
            PruningMethod::Channel { .. } if shape.len() < 2 => Err(format!(
                "pruning.structure = \"channel\" removes output channels of weights of rank >= 2, but {name} has shape {shape:?}: a bias follows its weight"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_follows_the_wire_fields() {
        use PruningMethod::*;
        let avg = BlockPooling::Avg;
        assert_eq!(PruningMethod::resolve([1, 1], BlockPooling::Max, None), Some(ElementWise));
        assert_eq!(
            PruningMethod::resolve([2, 4], BlockPooling::Max, None),
            Some(Block { size: [2, 4], pooling: BlockPooling::Max })
        );
        assert_eq!(PruningMethod::resolve([1, 1], avg, Some([2, 4])), Some(MByN { m: 2, n: 4 }));
        // m_by_n wins over a block size (validation rejects the pair where it is written).
        assert_eq!(PruningMethod::resolve([2, 2], avg, Some([2, 4])), Some(MByN { m: 2, n: 4 }));
        assert_eq!(PruningMethod::resolve([-1, 2], avg, None), None);
    }

    #[test]
    fn recompute_rules() {
        let schedule = Schedule::ConstantSparsity { target_sparsity: 0.5, begin_step: 0, end_step: -1, frequency: 2 };
        let m_by_n = PruningMethod::MByN { m: 2, n: 4 };
        assert!(m_by_n.recompute_at(&schedule, 1));
        assert!(!m_by_n.recompute_at(&schedule, 2));
        for step in 0..6 {
            assert_eq!(PruningMethod::ElementWise.recompute_at(&schedule, step), schedule.should_prune(step));
        }
    }

    #[test]
    fn first_recompute_step_agrees_with_recompute_at() {
        let methods = [PruningMethod::ElementWise, PruningMethod::MByN { m: 1, n: 2 }];
        for (begin, end, frequency) in [(0, -1, 3), (5, 20, 4), (7, 7, 10), (30, 10, 1), (-4, -1, 3)] {
            let schedule =
                Schedule::ConstantSparsity { target_sparsity: 0.5, begin_step: begin, end_step: end, frequency };
            for method in methods {
                let first = (1..200).find(|&s| method.recompute_at(&schedule, s)).unwrap_or(i64::MAX);
                assert_eq!(method.first_recompute_step(&schedule), first, "{method:?} {schedule:?}");
            }
        }
    }

    #[test]
    fn masks_are_the_mask_functions() {
        let w = [0.1, -0.5, 0.3, 0.05, 0.9, -0.2, 0.0, 0.4];
        assert_eq!(PruningMethod::ElementWise.mask(&w, &[2, 4], 0.5), mask::element_mask(&w, 0.5));
        let block = PruningMethod::Block { size: [1, 2], pooling: BlockPooling::Max };
        assert_eq!(block.mask(&w, &[2, 4], 0.5), mask::block_mask(&w, 2, 4, [1, 2], BlockPooling::Max, 0.5));
        assert_eq!(PruningMethod::MByN { m: 2, n: 4 }.mask(&w, &[2, 4], 0.9), mask::m_by_n_mask(&w, &[2, 4], 2, 4));
    }

    #[test]
    fn shape_rules() {
        let block = PruningMethod::Block { size: [2, 2], pooling: BlockPooling::Avg };
        assert!(block.check_shape("w", &[4, 4]).is_ok());
        assert!(block.check_shape("w", &[4, 4, 3, 3]).unwrap_err().contains("needs 2-D weights"));
        assert!(PruningMethod::MByN { m: 1, n: 2 }.check_shape("b", &[4]).is_err());
        assert!(PruningMethod::ElementWise.check_shape("b", &[4]).is_ok());
    }
}
