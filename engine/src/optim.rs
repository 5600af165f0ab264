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
        // Python's `beta ** step` is C's pow(), which powi does not always match in the last bit.
        let t = self.steps as f64;
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
                        // torch.optim.Adam's single-tensor update (the one it runs on the CPU),
                        // operation for operation, so that both round alike: lerp_, then
                        // addcmul_/addcdiv_ whose `value` factor multiplies the first operand
                        // first, as PyTorch's kernels do.
                        let mut m = self.state[i][0].shallow_clone();
                        let mut v = self.state[i][1].shallow_clone();
                        let _ = m.lerp_(&grad, 1.0 - BETA1);
                        let _ = v.g_mul_scalar_(BETA2).addcmul_(&(&grad * (1.0 - BETA2)), &grad);
                        let bc1 = 1.0 - BETA1.powf(t);
                        let bc2 = 1.0 - BETA2.powf(t);
                        let mut denom = v.sqrt();
                        let _ = denom.g_div_scalar_(bc2.sqrt()).g_add_scalar_(EPS);
                        let _ = p.addcdiv_(&(&m * (-self.lr / bc1)), &denom);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Seven updates of one parameter with fixed gradients, compared bit for bit with what
    /// torch.optim (the venv's PyTorch 2.13, CPU) computes for the same values on this machine
    /// (its last bit depends on the CPU's vector unit, for libtorch and torch.optim alike): Adam
    /// and AdamW with weight_decay 0.01 at lr 1e-3, SGD with momentum 0.9, weight_decay 0.01 at
    /// lr 0.05.
    #[test]
    fn updates_match_torch_optim_bit_for_bit() {
        const TORCH: &str = r#"
import struct, torch
for make in (lambda p: torch.optim.Adam([p], lr=1e-3, weight_decay=0.01),
             lambda p: torch.optim.AdamW([p], lr=1e-3, weight_decay=0.01),
             lambda p: torch.optim.SGD([p], lr=0.05, momentum=0.9, weight_decay=0.01)):
    p = torch.tensor([0.5, -1.25, 2.0, 0.1, -0.003, 7.5], requires_grad=True)
    opt = make(p)
    for step in range(1, 8):
        g = torch.tensor([((i + 1) * 0.37 * step) % 1.3 - 0.6 for i in range(6)], dtype=torch.float32)
        opt.zero_grad()
        (p * g).sum().backward()
        opt.step()
    print(" ".join(str(struct.unpack("<I", struct.pack("<f", v))[0]) for v in p.detach().tolist()))
"#;
        let venv = std::env::var("PRUNE_VENV").expect("PRUNE_VENV is set by `make test` (scripts/libtorch-env.sh)");
        let out = std::process::Command::new(std::path::Path::new(&venv).join("bin/python"))
            .args(["-c", TORCH])
            .output()
            .expect("run the venv's python");
        assert!(out.status.success(), "torch.optim: {}", String::from_utf8_lossy(&out.stderr));
        let torch: Vec<Vec<u32>> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
            .collect();
        let cases = [(Kind::Adam, 1e-3), (Kind::AdamW, 1e-3), (Kind::Sgd { momentum: 0.9 }, 0.05)];
        assert_eq!(torch.len(), cases.len());
        for ((kind, lr), want) in cases.into_iter().zip(torch) {
            let p = Tensor::from_slice(&[0.5f32, -1.25, 2.0, 0.1, -0.003, 7.5]).set_requires_grad(true);
            let mut opt = Optimizer { kind, lr, weight_decay: 0.01, steps: 0, state: vec![Vec::new()] };
            for step in 1..=7 {
                let g: Vec<f32> =
                    (0..6).map(|i| ((f64::from(i + 1) * 0.37 * f64::from(step)) % 1.3 - 0.6) as f32).collect();
                let mut grad = p.grad();
                if grad.defined() {
                    let _ = grad.zero_();
                }
                // d/dp sum(p * g) = g, exactly.
                (&p * Tensor::from_slice(&g)).sum(tch::Kind::Float).backward();
                opt.step(&[&p]);
            }
            let got: Vec<u32> = Vec::<f32>::try_from(&p.detach()).unwrap().iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{kind:?}");
        }
    }
}
