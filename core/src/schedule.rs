//! tfmot's pruning schedules, bit-exact in f32 (see `docs/pruning-semantics.md`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    PolynomialDecay {
        initial_sparsity: f64,
        final_sparsity: f64,
        begin_step: i64,
        end_step: i64,
        #[serde(default = "default_power")]
        power: f64,
        #[serde(default = "default_frequency")]
        frequency: i64,
    },
    ConstantSparsity {
        target_sparsity: f64,
        #[serde(default)]
        begin_step: i64,
        #[serde(default = "default_end")]
        end_step: i64,
        #[serde(default = "default_frequency")]
        frequency: i64,
    },
}

fn default_power() -> f64 {
    3.0
}
fn default_frequency() -> i64 {
    100
}
fn default_end() -> i64 {
    -1
}

impl Schedule {
    pub fn begin_step(&self) -> i64 {
        match *self {
            Schedule::PolynomialDecay { begin_step, .. } | Schedule::ConstantSparsity { begin_step, .. } => begin_step,
        }
    }
    pub fn end_step(&self) -> i64 {
        match *self {
            Schedule::PolynomialDecay { end_step, .. } | Schedule::ConstantSparsity { end_step, .. } => end_step,
        }
    }
    pub fn frequency(&self) -> i64 {
        match *self {
            Schedule::PolynomialDecay { frequency, .. } | Schedule::ConstantSparsity { frequency, .. } => frequency,
        }
    }

    /// The sparsity the schedule ends at: used for one-shot pruning (`epochs = 0`).
    pub fn final_sparsity(&self) -> f32 {
        match *self {
            Schedule::PolynomialDecay { final_sparsity, .. } => final_sparsity as f32,
            Schedule::ConstantSparsity { target_sparsity, .. } => target_sparsity as f32,
        }
    }

    /// The schedule with its final sparsity replaced (`final_sparsity` of `polynomial_decay`,
    /// `target_sparsity` of `constant_sparsity`); everything else is kept, except that a
    /// polynomial decay's `initial_sparsity` is lowered to the new final one where it lay above.
    /// The final sparsity as the job file wrote it (f64): calibrated methods count pruned
    /// weights as their references do, `int(columns * sparsity)` in double precision.
    pub fn final_sparsity_f64(&self) -> f64 {
        match *self {
            Schedule::PolynomialDecay { final_sparsity, .. } => final_sparsity,
            Schedule::ConstantSparsity { target_sparsity, .. } => target_sparsity,
        }
    }

    pub fn with_final_sparsity(self, sparsity: f64) -> Schedule {
        match self {
            Schedule::PolynomialDecay { initial_sparsity, begin_step, end_step, power, frequency, .. } => {
                Schedule::PolynomialDecay {
                    initial_sparsity: initial_sparsity.min(sparsity),
                    final_sparsity: sparsity,
                    begin_step,
                    end_step,
                    power,
                    frequency,
                }
            }
            Schedule::ConstantSparsity { begin_step, end_step, frequency, .. } => {
                Schedule::ConstantSparsity { target_sparsity: sparsity, begin_step, end_step, frequency }
            }
        }
    }

    /// tfmot `_should_prune_in_step`.
    pub fn should_prune(&self, step: i64) -> bool {
        let (begin, end, freq) = (self.begin_step(), self.end_step(), self.frequency());
        step >= begin && (step <= end || end < 0) && (step - begin) % freq == 0
    }

    /// The first step >= 1 at which [`Schedule::should_prune`] holds (step 0 is never
    /// evaluated); `None` if there is none. Closed form: a spec may ask for ~1e14 steps, so
    /// scanning them would stall CreateJob.
    pub fn first_pruning_step(&self) -> Option<i64> {
        let (begin, end, freq) = (self.begin_step() as i128, self.end_step() as i128, self.frequency() as i128);
        if freq <= 0 {
            return None;
        }
        // The smallest begin + k*freq (k >= 0) that is >= 1.
        let first = if begin >= 1 { begin } else { begin + (1 - begin + freq - 1) / freq * freq };
        (end < 0 || first <= end).then_some(first).and_then(|f| i64::try_from(f).ok())
    }

    /// The target sparsity at `step`, computed exactly as tfmot does in f32.
    pub fn sparsity(&self, step: i64) -> f32 {
        match *self {
            Schedule::ConstantSparsity { target_sparsity, .. } => target_sparsity as f32,
            Schedule::PolynomialDecay { initial_sparsity, final_sparsity, begin_step, end_step, power, .. } => {
                let p = ((step - begin_step) as f32 / (end_step - begin_step) as f32).clamp(0.0, 1.0);
                // `initial - final` in f64 then rounded, as TF folds the Python constant.
                let span = (initial_sparsity - final_sparsity) as f32;
                let decay = (1.0f32 - p).powf(power as f32);
                // Separate multiply and add: no fused multiply-add, as TF computes it.
                let scaled = std::hint::black_box(span * decay);
                scaled + final_sparsity as f32
            }
        }
    }

    /// tfmot's validation, with its messages (plus the PolynomialDecay division by zero it misses).
    /// Returns `(field, reason)` pairs; field names are relative to the schedule table.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        let (begin, end, freq) = (self.begin_step(), self.end_step(), self.frequency());
        let polynomial = matches!(self, Schedule::PolynomialDecay { .. });
        if begin < 0 {
            errors.push(("begin_step", "begin_step should be >= 0".to_string()));
        }
        if polynomial && end == -1 {
            errors.push(("end_step", "end_step cannot be -1.".to_string()));
        } else if end != -1 {
            if end < 0 {
                errors.push(("end_step", "end_step can be -1 or >= 0".to_string()));
            } else if end < begin {
                errors.push(("end_step", "begin_step should be <= end_step if end_step != -1".to_string()));
            } else if polynomial && end == begin {
                errors.push((
                    "end_step",
                    "end_step should be > begin_step for polynomial_decay (the decay divides by end_step - begin_step)"
                        .to_string(),
                ));
            }
        }
        if freq <= 0 {
            errors.push(("frequency", "frequency should be > 0".to_string()));
        }
        let sparsities: Vec<(&'static str, f64)> = match *self {
            Schedule::PolynomialDecay { initial_sparsity, final_sparsity, .. } => {
                vec![("initial_sparsity", initial_sparsity), ("final_sparsity", final_sparsity)]
            }
            Schedule::ConstantSparsity { target_sparsity, .. } => vec![("target_sparsity", target_sparsity)],
        };
        for (name, s) in sparsities {
            if !(0.0..1.0).contains(&s) {
                errors.push((name, format!("{name} must be in range [0,1)")));
            }
        }
        if let Schedule::PolynomialDecay { power, .. } = *self {
            if !power.is_finite() {
                errors.push(("power", "power must be a finite number".to_string()));
            }
        }
        errors
    }

    /// Submit-time warnings for the silent failure modes tfmot users hit (tfmot #973/#975).
    /// `total_steps` is the number of training batches of the whole job.
    pub fn warnings(&self, total_steps: i64) -> Vec<String> {
        let mut out = Vec::new();
        let (begin, end, freq) = (self.begin_step(), self.end_step(), self.frequency());
        if freq <= 0 {
            return out;
        }
        if total_steps >= 0 && self.first_pruning_step().is_none_or(|first| first > total_steps) {
            out.push(format!(
                "the job runs {total_steps} training steps but the schedule's first pruning step is later \
                 (begin_step {begin}, frequency {freq}; step 0 is never evaluated): pruning would do nothing"
            ));
        }
        if end >= 0 && end > begin && (end - begin) % freq != 0 {
            let last = begin + (end - begin) / freq * freq;
            out.push(format!(
                "(end_step - begin_step) = {} is not a multiple of frequency {freq}: the last mask update is at step \
                 {last}, so the final sparsity {} is never applied",
                end - begin,
                self.final_sparsity()
            ));
        } else if end >= 0 && total_steps >= 0 && total_steps < end && matches!(self, Schedule::PolynomialDecay { .. })
        {
            out.push(format!(
                "the job runs {total_steps} training steps but end_step is {end}: the final sparsity {} is never reached",
                self.final_sparsity()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_pruning_step_agrees_with_a_scan() {
        for begin in 0..12 {
            for end in [-1, 0, 1, 5, 11, 30] {
                for frequency in 1..7 {
                    let s = Schedule::ConstantSparsity {
                        target_sparsity: 0.5,
                        begin_step: begin,
                        end_step: end,
                        frequency,
                    };
                    let scanned = (1..=200).find(|&step| s.should_prune(step));
                    assert_eq!(s.first_pruning_step(), scanned, "begin {begin} end {end} frequency {frequency}");
                }
            }
        }
        // Huge step counts answer at once.
        let late =
            Schedule::ConstantSparsity { target_sparsity: 0.5, begin_step: i64::MAX - 1, end_step: -1, frequency: 1 };
        assert_eq!(late.first_pruning_step(), Some(i64::MAX - 1));
        assert_eq!(late.warnings(190_000_000_000_000).len(), 1);
    }

    #[test]
    fn polynomial_matches_hand_values() {
        let s = Schedule::PolynomialDecay {
            initial_sparsity: 0.5,
            final_sparsity: 0.8,
            begin_step: 0,
            end_step: 1000,
            power: 3.0,
            frequency: 100,
        };
        assert_eq!(s.sparsity(0), 0.5);
        assert_eq!(s.sparsity(1000), 0.8);
        assert_eq!(s.sparsity(5000), 0.8);
        assert!(s.should_prune(0) && s.should_prune(100) && !s.should_prune(150) && !s.should_prune(1100));
    }

    #[test]
    fn rejects_with_tfmot_messages() {
        let bad = Schedule::ConstantSparsity { target_sparsity: 1.0, begin_step: -1, end_step: -5, frequency: 0 };
        let msgs: Vec<String> = bad.validate().into_iter().map(|(_, m)| m).collect();
        assert!(msgs.contains(&"begin_step should be >= 0".to_string()));
        assert!(msgs.contains(&"end_step can be -1 or >= 0".to_string()));
        assert!(msgs.contains(&"frequency should be > 0".to_string()));
        assert!(msgs.contains(&"target_sparsity must be in range [0,1)".to_string()));
        let poly = Schedule::PolynomialDecay {
            initial_sparsity: 0.2,
            final_sparsity: 0.8,
            begin_step: 10,
            end_step: -1,
            power: 3.0,
            frequency: 10,
        };
        assert_eq!(poly.validate()[0].1, "end_step cannot be -1.");
        // Enum variants have no `..base` update syntax: spell the variant out.
        let same = Schedule::PolynomialDecay {
            initial_sparsity: 0.2,
            final_sparsity: 0.8,
            begin_step: 10,
            end_step: 10,
            power: 3.0,
            frequency: 10,
        };
        assert_eq!(same.validate()[0].0, "end_step");
        let backwards = Schedule::ConstantSparsity { target_sparsity: 0.5, begin_step: 10, end_step: 5, frequency: 1 };
        assert_eq!(backwards.validate()[0].1, "begin_step should be <= end_step if end_step != -1");
    }

    #[test]
    fn warns_on_silent_failures() {
        let s = Schedule::PolynomialDecay {
            initial_sparsity: 0.5,
            final_sparsity: 0.8,
            begin_step: 0,
            end_step: 250,
            power: 3.0,
            frequency: 100,
        };
        assert!(s.warnings(1000).iter().any(|w| w.contains("never applied")));
        let late = Schedule::ConstantSparsity { target_sparsity: 0.5, begin_step: 2000, end_step: -1, frequency: 100 };
        assert!(late.warnings(1000).iter().any(|w| w.contains("pruning would do nothing")));
        let ok = Schedule::PolynomialDecay {
            initial_sparsity: 0.5,
            final_sparsity: 0.8,
            begin_step: 0,
            end_step: 200,
            power: 3.0,
            frequency: 100,
        };
        assert!(ok.warnings(1000).is_empty());
    }
}
