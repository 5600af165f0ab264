//! SGD (momentum), Adam and AdamW, written on tensors so that their state can be checkpointed
//! (libtorch's C++ optimizers keep it out of reach). The update rules are PyTorch's.

use prune_core::job::Training;
use prune_core::options::Optimizer as Algorithm;
use tch::Tensor;

use crate::EngineError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Sgd { momentum: f64 },
    Adam,
    AdamW,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

pub struct Optimizer {
    kind: Kind,
    lr: f64,
    weight_decay: f64,
    /// Completed updates (Adam's bias-correction counter).
    pub steps: i64,
    /// Per parameter: SGD momentum buffer, or Adam's (exp_avg, exp_avg_sq). Created lazily.
    state: Vec<Vec<Tensor>>,
}

impl Optimizer {
    pub fn new(spec: &Training, n_params: usize) -> Optimizer {
        let kind = match spec.optimizer {
            Algorithm::Sgd => Kind::Sgd { momentum: spec.momentum },
            Algorithm::Adam => Kind::Adam,
            Algorithm::AdamW => Kind::AdamW,
        };
        Optimizer {
            kind,
            lr: spec.learning_rate,
            weight_decay: spec.weight_decay,
            steps: 0,
            state: (0..n_params).map(|_| Vec::new()).collect(),
        }
    }

    pub fn learning_rate(&self) -> f64 {
        self.lr
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self, params: &[&Tensor]) {
        self.steps += 1;
        let t = self.steps as i32;
        tch::no_grad(|| {
            for (i, p) in params.iter().enumerate() {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                match self.kind {
                    Kind::Sgd { momentum } => {
                        let d = if self.weight_decay != 0.0 { &grad + &p * self.weight_decay } else { grad };
                        let d = if momentum != 0.0 {
                            let buf = match self.state[i].first() {
                                Some(buf) => {
                                    let mut buf = buf.shallow_clone();
                                    let _ = buf.g_mul_scalar_(momentum).g_add_(&d);
                                    buf
                                }
                                None => d.copy(),
                            };
                            self.state[i] = vec![buf.shallow_clone()];
                            buf
                        } else {
                            d
                        };
                        let _ = p.g_sub_(&(d * self.lr));
                    }
                    Kind::Adam | Kind::AdamW => {
                        let grad = match self.kind {
                            Kind::Adam if self.weight_decay != 0.0 => &grad + &p * self.weight_decay,
                            _ => grad,
                        };
                        if self.kind == Kind::AdamW && self.weight_decay != 0.0 {
                            let _ = p.g_mul_scalar_(1.0 - self.lr * self.weight_decay);
                        }
                        if self.state[i].is_empty() {
                            self.state[i] = vec![grad.zeros_like(), grad.zeros_like()];
                        }
                        let mut m = self.state[i][0].shallow_clone();
                        let mut v = self.state[i][1].shallow_clone();
                        let _ = m.g_mul_scalar_(BETA1).g_add_(&(&grad * (1.0 - BETA1)));
                        let _ = v.g_mul_scalar_(BETA2).g_add_(&(&grad * &grad * (1.0 - BETA2)));
                        let bc1 = 1.0 - BETA1.powi(t);
                        let bc2 = 1.0 - BETA2.powi(t);
                        let denom = v.sqrt() / bc2.sqrt() + EPS;
                        let _ = p.g_sub_(&(m / denom * (self.lr / bc1)));
                    }
                }
            }
        });
    }

    /// The state as named tensors for a checkpoint: `optim.<param index>.<slot>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, slots) in self.state.iter().enumerate() {
            for (j, t) in slots.iter().enumerate() {
                out.push((format!("optim.{i}.{j}"), t.shallow_clone()));
            }
        }
        out
    }

    /// Restores what `state_tensors` produced.
    pub fn restore(&mut self, steps: i64, tensors: &[(String, Tensor)]) -> Result<(), EngineError> {
        self.steps = steps;
        for (name, t) in tensors {
            let Some(rest) = name.strip_prefix("optim.") else { continue };
            let (i, j) = rest
                .split_once('.')
                .and_then(|(i, j)| Some((i.parse::<usize>().ok()?, j.parse::<usize>().ok()?)))
                .ok_or_else(|| EngineError::Checkpoint(format!("bad optimizer tensor name {name:?}")))?;
            let slots = self.state.get_mut(i).ok_or_else(|| {
                EngineError::Checkpoint(format!("optimizer state for parameter {i} that the model lacks"))
            })?;
            if slots.len() <= j {
                slots.resize_with(j + 1, Tensor::new);
            }
            slots[j] = t.shallow_clone();
        }
        Ok(())
    }
}
