//! The balloon's endpoints: before boot they edit the draft's `balloon`
//! section, after boot they reach the device (a new target or hinting
//! command is then announced to the driver as a configuration change).

use serde_json::{Value, json};
use sie_config::{
    BALLOON_PAGES_PER_MIB, BalloonStartCmd, BalloonStatsUpdate, BalloonUpdate, Response,
};
use sie_virtio::VirtioCore;
use sie_virtio::balloon::Balloon;

use super::phase_faults::BEFORE_START;
use super::{Controller, Phase};

const NOT_CONFIGURED: &str = "The balloon device is not configured.";

impl Controller {
    /// The live balloon, once the VM runs (`None` before boot).
    fn live_balloon(&self) -> Option<&std::sync::Arc<VirtioCore<Balloon>>> {
        match &self.phase {
            Phase::Running(vm) => vm.virtio.balloon.as_ref(),
            Phase::NotStarted => None,
        }
    }

    pub(super) fn get_balloon(&self) -> Response {
        match self.draft.balloon() {
            Some(balloon) => Response::Json(serde_json::to_value(balloon).unwrap_or(Value::Null)),
            None => Response::fault(NOT_CONFIGURED),
        }
    }

    pub(super) fn patch_balloon(&mut self, update: BalloonUpdate) -> Response {
        let mem = self.draft.machine().mem_size_mib;
        if let Err(error) = sie_config::check_amount(update.amount_mib, mem) {
            return Response::fault(error);
        }
        let Some(balloon) = self.draft.balloon_mut() else {
            return Response::fault(NOT_CONFIGURED);
        };
        balloon.amount_mib = update.amount_mib;
        let pages = balloon.target_pages();
        if let Some(device) = self.live_balloon() {
            device.with_device(|b| b.set_target_pages(pages));
            device.config_changed();
        }
        Response::NoContent
    }

    pub(super) fn patch_balloon_stats(&mut self, update: BalloonStatsUpdate) -> Response {
        let interval = update.stats_polling_interval_s;
        if let Some(device) = self.live_balloon()
            && let Err(error) = device.with_device(|b| b.set_stats_interval(interval))
        {
            return Response::fault(error);
        }
        let Some(balloon) = self.draft.balloon_mut() else {
            return Response::fault(NOT_CONFIGURED);
        };
        balloon.stats_polling_interval_s = interval;
        Response::NoContent
    }

    pub(super) fn balloon_stats(&self) -> Response {
        if self.draft.balloon().is_none() {
            return Response::fault(NOT_CONFIGURED);
        }
        let Some(device) = self.live_balloon() else {
            return Response::fault(BEFORE_START);
        };
        let (target, actual, stats) =
            device.with_device(|b| (b.target_pages(), b.actual_pages(), b.stats()));
        let stats = match stats {
            Ok(stats) => stats,
            Err(error) => return Response::fault(error),
        };
        let mut body = json!({
            "target_pages": target,
            "actual_pages": actual,
            "target_mib": target / BALLOON_PAGES_PER_MIB,
            "actual_mib": actual / BALLOON_PAGES_PER_MIB,
        });
        for (name, value) in stats.fields() {
            body[name] = json!(value);
        }
        Response::Json(body)
    }

    /// `start` with a command, or stop when `None`.
    pub(super) fn balloon_hinting(&mut self, start: Option<BalloonStartCmd>) -> Response {
        if self.draft.balloon().is_none() {
            return Response::fault(NOT_CONFIGURED);
        }
        let Some(device) = self.live_balloon() else {
            return Response::fault(BEFORE_START);
        };
        let result = device.with_device(|b| match start {
            Some(start) => b.start_hinting(start.acknowledge_on_stop),
            None => b.stop_hinting(),
        });
        match result {
            Ok(()) => {
                device.config_changed();
                Response::NoContent
            }
            Err(error) => Response::fault(error),
        }
    }

    pub(super) fn balloon_hinting_status(&self) -> Response {
        if self.draft.balloon().is_none() {
            return Response::fault(NOT_CONFIGURED);
        }
        let Some(device) = self.live_balloon() else {
            return Response::fault(BEFORE_START);
        };
        match device.with_device(|b| b.hinting_status()) {
            Ok(status) => {
                let mut body = json!({"host_cmd": status.host_cmd});
                if let Some(guest) = status.guest_cmd {
                    body["guest_cmd"] = json!(guest);
                }
                Response::Json(body)
            }
            Err(error) => Response::fault(error),
        }
    }
}
