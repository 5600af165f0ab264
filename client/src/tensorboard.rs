//! TensorBoard event files, written by hand so that the client needs neither TensorFlow nor a
//! generated `tensorflow` proto: TFRecord framing (length, masked CRC32C of the length, data,
//! masked CRC32C of the data) around `tensorflow.Event` messages encoded with prost derives that
//! carry only the fields TensorBoard needs for scalars.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::types::MetricRecord;
use prune_core::files::write_atomically;

/// The version string TensorBoard expects in the first record of every event file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// `tensorflow.Event`: only the fields used for scalars. `file_version` and `summary` are a
/// `oneof` in TensorFlow; optional fields encode identically on the wire.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`. `simple_value` is part of a `oneof` in TensorFlow, so it is
/// optional here: a plain proto3 float would drop a value of 0.0 from the wire, and TensorBoard
/// would then see a value with no data.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// Writes one event file for `records` into `dir` (created if missing) and returns its path.
///
/// The file is named `events.out.tfevents.<unix seconds>.<host>` as TensorFlow's writer does, so
/// that TensorBoard picks it up. Records are grouped into one event per step, in step order.
/// `wall_time` of each event is the record's own time when the server reported one, else now.
pub fn write_event_file(dir: &Path, records: &[MetricRecord]) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let host = gethostname::gethostname().to_string_lossy().replace(['/', '\\'], "_");
    let path = dir.join(format!("events.out.tfevents.{}.{}", now.as_secs(), host));

    let mut out = Vec::new();
    let header =
        Event { wall_time: now.as_secs_f64(), step: 0, file_version: Some(FILE_VERSION.into()), summary: None };
    write_record(&mut out, &header.encode_to_vec())?;
    for event in events_by_step(records, now.as_secs_f64()) {
        write_record(&mut out, &event.encode_to_vec())?;
    }
    write_atomically(&path, |f| f.write_all(&out))?;
    Ok(path)
}

/// Reads every event of a file written by [`write_event_file`] (or by TensorFlow), checking both
/// CRCs of every record. Used by the tests and by anyone who wants to check an export.
pub fn read_event_file(path: &Path) -> io::Result<Vec<Event>> {
    let bytes = fs::read(path)?;
    let mut reader = bytes.as_slice();
    let mut events = Vec::new();
    while !reader.is_empty() {
        let data = read_record(&mut reader)?;
        let event = Event::decode(data.as_slice()).map_err(|e| invalid(format!("bad Event protobuf: {e}")))?;
        events.push(event);
    }
    Ok(events)
}

/// One `Event` per distinct step, steps ascending, values in the order the records came.
fn events_by_step(records: &[MetricRecord], wall_time: f64) -> Vec<Event> {
    let mut sorted: Vec<&MetricRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.step); // stable: keeps the server's order within a step
    let mut events: Vec<Event> = Vec::new();
    for record in sorted {
        let value = SummaryValue { tag: record.name.clone(), simple_value: Some(record.value as f32) };
        match events.last_mut() {
            Some(event) if event.step == record.step => {
                event.summary.get_or_insert_with(Summary::default).value.push(value);
            }
            _ => events.push(Event {
                wall_time,
                step: record.step,
                file_version: None,
                summary: Some(Summary { value: vec![value] }),
            }),
        }
    }
    events
}

/// TFRecord framing: `u64 len | u32 masked_crc(len) | data | u32 masked_crc(data)`, little endian.
fn write_record(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc(data).to_le_bytes())
}

fn read_record(reader: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    reader.read_exact(&mut len)?;
    if read_u32(reader)? != masked_crc(&len) {
        return Err(invalid("record length CRC mismatch".into()));
    }
    let mut data = vec![0u8; u64::from_le_bytes(len) as usize];
    reader.read_exact(&mut data)?;
    if read_u32(reader)? != masked_crc(&data) {
        return Err(invalid("record data CRC mismatch".into()));
    }
    Ok(data)
}

fn read_u32(reader: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    reader.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// TensorFlow's masked CRC32C: rotating and offsetting keeps a CRC of data that itself holds
/// CRCs from being trivially zero.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: i64, name: &str, value: f64) -> MetricRecord {
        MetricRecord { step, name: name.into(), value }
    }

    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("") = 0, so the masked value is the offset itself; crc32c("123456789") is the
        // standard check value 0xE3069283, masked by hand (rotate right 15, add the offset).
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let records = vec![
            record(100, "sparsity/0.weight", 0.5),
            record(0, "loss", 2.3),
            record(100, "loss", 0.0),
            record(200, "accuracy", 0.9),
        ];
        let path = write_event_file(dir.path(), &records).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents."), "{name}");

        let events = read_event_file(&path).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
        assert!(events[0].summary.is_none());
        let steps: Vec<i64> = events[1..].iter().map(|e| e.step).collect();
        assert_eq!(steps, [0, 100, 200]);
        let at_100 = &events[2].summary.as_ref().unwrap().value;
        assert_eq!(at_100.len(), 2);
        assert_eq!(at_100[0].tag, "sparsity/0.weight");
        assert_eq!(at_100[0].simple_value, Some(0.5));
        // A zero value must still be on the wire.
        assert_eq!(at_100[1].tag, "loss");
        assert_eq!(at_100[1].simple_value, Some(0.0));
    }

    #[test]
    fn corrupted_record_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_event_file(dir.path(), &[record(1, "loss", 1.0)]).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let err = read_event_file(&path).unwrap_err();
        assert!(err.to_string().contains("CRC"), "{err}");
    }
}
