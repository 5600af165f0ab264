//! `prunectl info`: the server's version, node, limits, devices and disk use.

use anyhow::Result;
use serde_json::json;

use super::Ctx;
use crate::output;

pub async fn run(ctx: &Ctx) -> Result<()> {
    let info = ctx.connect().await?.server_info().await?;
    let limits = info.limits.unwrap_or_default();
    let doc = json!({
        "version": info.version,
        "api_version": info.api_version,
        "node": info.node,
        "devices": info.devices,
        "export_formats": info.export_formats,
        "compressions": info.compressions,
        "sparse_formats": info.sparse_formats,
        "database": info.database,
        "store": info.store,
        "workers": info.workers,
        "data_dir_bytes": info.data_dir_bytes,
        "limits": {
            "max_upload_bytes": limits.max_upload_bytes,
            "max_spec_bytes": limits.max_spec_bytes,
            "max_queued_per_tenant": limits.max_queued_per_tenant,
            "max_message_bytes": limits.max_message_bytes,
            "max_attempts": limits.max_attempts,
            "max_running_per_tenant": limits.max_running_per_tenant,
            "retention_days": limits.retention_days,
            "tracked_timeout_secs": limits.tracked_timeout_secs,
        },
    });
    ctx.out.show(&doc, |_| {
        [
            format!("prune-server {} ({}), node {}", info.version, info.api_version, info.node),
            format!("devices: {}", info.devices.join(", ")),
            format!(
                "exports: {}; compressions: {}; sparse formats: {}",
                info.export_formats.join(", "),
                info.compressions.join(", "),
                info.sparse_formats.join(", ")
            ),
            format!("database: {}; store: {}; workers: {}", info.database, info.store, info.workers),
            format!("data dir: {}", output::bytes(info.data_dir_bytes)),
            format!(
                "limits: uploads {}, specs {}, {} queued per tenant, {} attempts, running per tenant {}, retention {}, \
                 tracked runs fail after {} s without a report",
                output::bytes(limits.max_upload_bytes),
                output::bytes(limits.max_spec_bytes),
                limits.max_queued_per_tenant,
                limits.max_attempts,
                if limits.max_running_per_tenant == 0 {
                    "unlimited".into()
                } else {
                    limits.max_running_per_tenant.to_string()
                },
                if limits.retention_days == 0 { "off".into() } else { format!("{} days", limits.retention_days) },
                limits.tracked_timeout_secs,
            ),
        ]
        .join("\n")
    })?;
    Ok(())
}
