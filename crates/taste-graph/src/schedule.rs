//! Learning-rate schedules: from a given epoch on, another Adam rate (and batch size),
//! written `EPOCH:LR[:BATCH]` on command lines (`gowalla --schedule 61:4e-3,421:1.5e-3`).
//! Adam's moments are kept across a switch.

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::trainer::Trainer;

/// One schedule step: from epoch `epoch` (1-based) on, Adam rate `lr` and, if given,
/// batch size `batch`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSwitch {
    /// First epoch (1-based) trained with the new settings.
    pub epoch: usize,
    /// Adam's learning rate (finite, > 0).
    pub lr: f32,
    /// Batch size (>= 1), or `None` to keep the current one.
    pub batch: Option<usize>,
}

impl FromStr for RateSwitch {
    type Err = Error;

    /// Parses `EPOCH:LR` or `EPOCH:LR:BATCH`, e.g. `61:4e-3` or `1001:2.5e-4:2048`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |what: String| Error::Config {
            message: format!("schedule entry {s:?}: {what}"),
        };
        let parts: Vec<&str> = s.split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad("expected EPOCH:LR or EPOCH:LR:BATCH".into()));
        }
        let epoch: usize = parts[0]
            .parse()
            .map_err(|e| bad(format!("epoch {:?}: {e}", parts[0])))?;
        let lr: f32 = parts[1]
            .parse()
            .map_err(|e| bad(format!("learning rate {:?}: {e}", parts[1])))?;
        let batch = match parts.get(2) {
            Some(b) => Some(
                b.parse::<usize>()
                    .map_err(|e| bad(format!("batch {b:?}: {e}")))?,
            ),
            None => None,
        };
        if epoch == 0 {
            return Err(bad("epochs count from 1".into()));
        }
        if !(lr.is_finite() && lr > 0.0) {
            return Err(bad(format!("learning rate {lr}, expected finite and > 0")));
        }
        if batch == Some(0) {
            return Err(bad("batch size 0, expected at least 1".into()));
        }
        Ok(RateSwitch { epoch, lr, batch })
    }
}

impl Trainer {
    /// Applies a schedule step: the rate from the next step on, the batch size (if
    /// given) from the next epoch on.
    pub fn apply_switch(&mut self, switch: &RateSwitch) -> Result<()> {
        self.set_lr(switch.lr)?;
        if let Some(b) = switch.batch {
            self.set_batch_size(b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::BipartiteGraph;
    use crate::ids::{ItemId, UserId};
    use crate::lightgcn::LightGcnConfig;

    #[test]
    fn switches_parse_apply_and_bad_entries_are_typed_errors() {
        assert_eq!(
            "61:4e-3".parse::<RateSwitch>().unwrap(),
            RateSwitch {
                epoch: 61,
                lr: 4e-3,
                batch: None
            }
        );
        let s: RateSwitch = "1001:2.5e-4:2048".parse().unwrap();
        assert_eq!((s.epoch, s.lr, s.batch), (1001, 2.5e-4, Some(2048)));
        for bad in [
            "61",
            "61:",
            "x:1e-3",
            "61:fast",
            "61:1e-3:big",
            "0:1e-3",
            "5:-1",
            "5:NaN",
            "5:1e-3:0",
            "1:2:3:4",
        ] {
            let e = bad.parse::<RateSwitch>().unwrap_err();
            assert!(
                matches!(e, Error::Config { .. }) && e.to_string().contains(bad),
                "{bad}: {e}"
            );
        }
        let g = BipartiteGraph::from_edges(2, 3, [(UserId(0), ItemId(1)), (UserId(1), ItemId(2))])
            .unwrap();
        let mut t = Trainer::new(&g, &LightGcnConfig::new().dim(4)).unwrap();
        t.apply_switch(&s).unwrap();
        assert_eq!((t.config().adam.lr, t.config().batch_size), (2.5e-4, 2048));
        t.apply_switch(&"3:1e-2".parse().unwrap()).unwrap();
        assert_eq!((t.config().adam.lr, t.config().batch_size), (1e-2, 2048));
    }
}
