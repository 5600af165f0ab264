//! Loss and accuracy of a model on a data set, as training and the analyses measure them.

use prune_core::options::Loss;
use tch::{Kind, Reduction, Tensor};

use crate::data::{self, Dataset};
use crate::model::Model;
use crate::EngineError;

const EVAL_BATCH: i64 = 1024;

/// What a model scores on a data set: mean loss, and accuracy under cross-entropy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub loss: f64,
    pub accuracy: Option<f64>,
}

/// [`evaluate`] as a [`Score`] (`accuracy` only under cross-entropy).
pub fn score(model: &mut Model, data: &Dataset, loss: Loss) -> Result<Score, EngineError> {
    let cross_entropy = loss == Loss::CrossEntropy;
    let (loss, accuracy) = evaluate(model, data, cross_entropy)?;
    Ok(Score { loss, accuracy: cross_entropy.then_some(accuracy) })
}

/// The data an analysis or a final report measures on: the validation split, else the training data.
pub fn measured_on(split: &data::Split) -> &Dataset {
    split.validation.as_ref().unwrap_or(&split.train)
}

pub(crate) fn loss_and_correct(cross_entropy: bool, out: &Tensor, y: &Tensor) -> Result<(Tensor, f64), EngineError> {
    if cross_entropy {
        let loss = out.f_cross_entropy_loss::<Tensor>(y, None, Reduction::Mean, -100, 0.0)?;
        let correct = f64::try_from(out.argmax(-1, false).eq_tensor(y).sum(Kind::Float))?;
        Ok((loss, correct))
    } else {
        Ok((out.f_mse_loss(y, Reduction::Mean)?, f64::NAN))
    }
}

/// Mean loss and accuracy over `data` in eval mode (no dropout; batch norm uses its statistics).
pub fn evaluate(model: &mut Model, data: &Dataset, cross_entropy: bool) -> Result<(f64, f64), EngineError> {
    model.set_train(false)?;
    let result = tch::no_grad(|| -> Result<(f64, f64), EngineError> {
        let (mut loss_sum, mut correct) = (0.0, 0.0);
        let n = data.len();
        let mut start = 0;
        while start < n {
            let len = EVAL_BATCH.min(n - start);
            let out = model.forward(&data.x.narrow(0, start, len), false)?;
            let (loss, c) = loss_and_correct(cross_entropy, &out, &data.y.narrow(0, start, len))?;
            loss_sum += f64::try_from(&loss)? * len as f64;
            correct += c;
            start += len;
        }
        Ok((loss_sum / n as f64, correct / n as f64))
    });
    model.set_train(true)?;
    result
}
