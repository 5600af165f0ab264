//! Writes sample reconstruction-error plots to look at:
//! `cargo run -p prune-plot --example reconstruction -- /tmp` writes `reconstruction-log.png`
//! (errors over four decades, a log axis, a few zeros), `reconstruction-linear.png` (errors
//! within two decades) and the log one as SVG.

use prune_plot::reconstruction::{self, LayerSeries};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/tmp".into()));
    let kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    // Made-up errors shaped like a 30-layer decoder's: growing with depth, each kind its own level.
    let series = |span: f64, zeros: bool| -> Vec<LayerSeries> {
        kinds
            .iter()
            .enumerate()
            .map(|(k, name)| LayerSeries {
                name: name.to_string(),
                points: (0..30u32)
                    .map(|layer| {
                        let depth = f64::from(layer) / 29.0;
                        let wobble = 1.0 + 0.25 * (f64::from(layer) * 0.9 + k as f64).sin();
                        let error = 10f64.powf(-span + span * depth * (0.6 + 0.06 * k as f64)) * wobble;
                        (layer, if zeros && k == 2 && layer < 2 { 0.0 } else { error.min(1.0) })
                    })
                    .collect(),
            })
            .collect()
    };
    let log = series(4.0, true);
    std::fs::write(dir.join("reconstruction-log.png"), reconstruction::png("SmolLM2-135M, wanda 50%", &log)?)?;
    std::fs::write(dir.join("reconstruction-log.svg"), reconstruction::svg("SmolLM2-135M, wanda 50%", &log)?)?;
    let linear = series(1.2, false);
    std::fs::write(
        dir.join("reconstruction-linear.png"),
        reconstruction::png("SmolLM2-135M, sparsegpt 50%", &linear)?,
    )?;
    println!("wrote {}/reconstruction-{{log,linear}}.png and reconstruction-log.svg", dir.display());
    Ok(())
}
