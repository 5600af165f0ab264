//! The closed sets of values that job spec fields take (`training.optimizer = "adam"`, ...).
//!
//! Each is an enum whose serde and [`FromStr`] names are exactly the job file's strings, so
//! `as_str` round-trips a value and [`UnknownValue`] keeps the message users have always seen
//! for a value outside the set (`` `rmsprop` is not one of: sgd, adam, adamw ``). The wire forms
//! (TOML, JSON, protobuf) keep plain strings; `validate::validate` parses them into these.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string that names no member of a closed set; displays as the validation message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not one of: {}", .allowed.join(", "))]
pub struct UnknownValue {
    pub value: String,
    pub allowed: &'static [&'static str],
}

/// Declares a fieldless enum whose members are named by the given strings, with `ALL`,
/// `NAMES`, `as_str`, `Display`, `FromStr` (error [`UnknownValue`]) and serde by name.
macro_rules! named_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every member, in the order the job spec lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every member's name, in the order of [`Self::ALL`].
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The name the job file uses.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownValue { value: s.to_string(), allowed: $name::NAMES })
            }
        }
    };
}

named_enum! {
    /// `training.optimizer`.
    pub enum Optimizer {
        Sgd = "sgd",
        Adam = "adam",
        AdamW = "adamw",
    }
}

named_enum! {
    /// `training.loss`.
    pub enum Loss {
        CrossEntropy = "cross_entropy",
        Mse = "mse",
    }
}

named_enum! {
    /// `data.builtin`.
    pub enum BuiltinData {
        /// sklearn's 8x8 digits, shipped with the project.
        Digits = "digits",
        /// Seeded random data of a given shape, class count and size.
        Synthetic = "synthetic",
    }
}

named_enum! {
    /// `pruning.block_pooling`: how a block's `|w|` values are pooled into one score.
    pub enum BlockPooling {
        Avg = "avg",
        Max = "max",
    }
}

named_enum! {
    /// `pruning.scope`: rank weights within each tensor, or across all of them.
    pub enum Scope {
        Layer = "layer",
        Global = "global",
    }
}

named_enum! {
    /// `pruning.structure`: single weights, or whole output channels (conv2d filters, linear
    /// neurons) with everything that depends on them.
    pub enum Structure {
        Element = "element",
        Channel = "channel",
    }
}

named_enum! {
    /// `pruning.method`: what ranks the weights. `magnitude` is tfmot's `|w|`; `wanda` and
    /// `sparsegpt` are calibrated methods for language models (docs/language-models.md).
    pub enum Criterion {
        Magnitude = "magnitude",
        Wanda = "wanda",
        SparseGpt = "sparsegpt",
    }
}

named_enum! {
    /// `pruning.channel_score`: the norm of a channel's weights that ranks it.
    pub enum ChannelScore {
        L2 = "l2",
        L1 = "l1",
    }
}

named_enum! {
    /// One entry of `export.formats`.
    pub enum ExportFormat {
        Safetensors = "safetensors",
        Torchscript = "torchscript",
    }
}

named_enum! {
    /// `export.sparse_format`: how a safetensors artifact stores its zeros.
    pub enum SparseFormat {
        Dense = "dense",
        /// compressed-tensors' `sparse_bitmask` layout (see `bitmask`).
        Bitmask = "bitmask",
    }
}

/// `training.device`: `cpu`, `cuda` (the first GPU), `cuda:N` or `auto` (the first GPU if
/// there is one, else the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// `cuda` (`None`) or `cuda:N`.
    Cuda(Option<u16>),
    Auto,
}

/// A `training.device` value that names no device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a device: expected cpu, cuda, cuda:N (N = GPU index) or auto")]
pub struct UnknownDevice(pub String);

impl Device {
    /// The GPU index this device asks for (`cuda` is GPU 0); `None` for `cpu` and `auto`.
    pub fn cuda_index(self) -> Option<u16> {
        match self {
            Device::Cuda(index) => Some(index.unwrap_or(0)),
            Device::Cpu | Device::Auto => None,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Auto => f.write_str("auto"),
            Device::Cuda(None) => f.write_str("cuda"),
            Device::Cuda(Some(index)) => write!(f, "cuda:{index}"),
        }
    }
}

impl FromStr for Device {
    type Err = UnknownDevice;

    /// `cpu`, `cuda`, `auto`, or `cuda:` and a GPU index of plain ASCII digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownDevice(s.to_string());
        match s.strip_prefix("cuda:") {
            Some(index) if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) => {
                index.parse().map(|i| Device::Cuda(Some(i))).map_err(|_| unknown())
            }
            Some(_) => Err(unknown()),
            None => match s {
                "cpu" => Ok(Device::Cpu),
                "cuda" => Ok(Device::Cuda(None)),
                "auto" => Ok(Device::Auto),
                _ => Err(unknown()),
            },
        }
    }
}

impl Serialize for Device {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for o in Optimizer::ALL {
            assert_eq!(o.as_str().parse::<Optimizer>().unwrap(), *o);
        }
        assert_eq!(Optimizer::NAMES, ["sgd", "adam", "adamw"]);
        assert_eq!(serde_json::to_string(&Loss::CrossEntropy).unwrap(), "\"cross_entropy\"");
        assert_eq!(serde_json::from_str::<SparseFormat>("\"bitmask\"").unwrap(), SparseFormat::Bitmask);
    }

    #[test]
    fn unknown_values_list_the_allowed_ones() {
        let err = "rmsprop".parse::<Optimizer>().unwrap_err();
        assert_eq!(err.to_string(), "`rmsprop` is not one of: sgd, adam, adamw");
        assert_eq!("mean".parse::<BlockPooling>().unwrap_err().to_string(), "`mean` is not one of: avg, max");
    }

    #[test]
    fn devices() {
        for (text, device) in [
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(None)),
            ("cuda:0", Device::Cuda(Some(0))),
            ("cuda:12", Device::Cuda(Some(12))),
            ("auto", Device::Auto),
        ] {
            assert_eq!(text.parse::<Device>().unwrap(), device, "{text}");
            assert_eq!(device.to_string(), text);
        }
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:+1", "cuda:x", "cuda:99999999", "CPU"] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
        assert_eq!(Device::Cuda(None).cuda_index(), Some(0));
        assert_eq!(Device::Auto.cuda_index(), None);
        assert_eq!(serde_json::to_string(&Device::Cuda(Some(3))).unwrap(), "\"cuda:3\"");
        assert_eq!(serde_json::from_str::<Device>("\"auto\"").unwrap(), Device::Auto);
    }
}
