//! `prunectl metrics ID`: the job's time series as `{"step", "name", "value"}` records (a JSON
//! array with `--json`), or a table.

use anyhow::Result;
use prune_client::MetricRecord;

use super::Ctx;
use crate::output::table;

pub async fn run(ctx: &Ctx, id: &str, prefix: Option<&str>) -> Result<()> {
    let records = ctx.connect().await?.metrics(id, prefix).await?;
    ctx.out.show(&records, |r| describe(r))?;
    Ok(())
}

fn describe(records: &[MetricRecord]) -> String {
    if records.is_empty() {
        return "no metrics recorded".into();
    }
    let rows: Vec<Vec<String>> =
        records.iter().map(|r| vec![r.name.clone(), r.step.to_string(), format!("{:.6}", r.value)]).collect();
    table(&["NAME", "STEP", "VALUE"], &rows)
}
