//! Fault injection: "the next N calls of action A answer like this".
//!
//! Rules are kept in insertion order; a call consumes the first rule that matches its
//! surface and action and still has calls left. Answer faults are taken after the
//! request has been authenticated (an unauthenticated request consumes nothing);
//! [`Fault::TaskFails`] is taken when a mutating call of that action creates its task.

use std::time::Duration;

use serde::Serialize;

use crate::calls::Surface;

/// What an injected fault does to the call it hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub enum Fault {
    /// `RequestLimitExceeded` (legacy: code 4400). Not processed.
    Throttle,
    /// `LimitExceeded.ActionLimited` (legacy: code 4400). Not processed.
    ActionLimited,
    /// Answers with this HTTP status and a short plain-text body. Not processed.
    Http { status: u16 },
    /// Waits this long, then answers HTTP 504. Not processed: set it longer than the
    /// client's timeout to provoke a client-side timeout.
    Timeout { after_ms: u64 },
    /// Processed normally, but the answer is held back this long: a lost or late
    /// answer to a call that did take effect.
    LateAnswer { after_ms: u64 },
    /// HTTP 200 with a body that is not valid JSON. Not processed.
    Malformed,
    /// An error answer with this code (API 3.0 `Error.Code`, legacy `codeDesc`; the
    /// legacy numeric `code` is derived from it, see `legacy::legacy_code_for`).
    /// Not processed.
    Error { code: String, message: String },
    /// The next task created by this action ends FAILED (the call itself succeeds).
    TaskFails,
    /// HTTP 200 with a body `bytes` long (the start of a JSON answer, then spaces),
    /// streamed in 64 KiB chunks as the client reads; with `chunked`, no
    /// `Content-Length` is sent, so only a client that counts can stop early. What was
    /// streamed is in [`crate::FakeCloud::streamed_bytes`]. Not processed.
    HugeBody { bytes: u64, chunked: bool },
    /// Answers `status` (a 3xx) with `Location: location`. Not processed.
    Redirect { status: u16, location: String },
    /// `DescribeNetworkInterfaces` only: answers the first page whatever the `Offset`,
    /// with a `TotalCount` of a billion, so a client that pages "while there is more"
    /// never ends. Processed (as a read).
    EndlessListing,
}

impl Fault {
    /// An arbitrary error code, e.g. `Fault::error("UnauthorizedOperation")`.
    pub fn error(code: impl Into<String>) -> Self {
        let code = code.into();
        Self::Error {
            message: format!("injected {code}"),
            code,
        }
    }

    /// [`Fault::Timeout`] from a duration.
    pub fn timeout(after: Duration) -> Self {
        Self::Timeout {
            after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// [`Fault::HugeBody`] of `bytes`, announced (`Content-Length`) or not (chunked).
    pub fn huge_body(bytes: u64, chunked: bool) -> Self {
        Self::HugeBody { bytes, chunked }
    }

    /// [`Fault::Redirect`].
    pub fn redirect(status: u16, location: impl Into<String>) -> Self {
        Self::Redirect {
            status,
            location: location.into(),
        }
    }

    /// [`Fault::LateAnswer`] from a duration.
    pub fn late_answer(after: Duration) -> Self {
        Self::LateAnswer {
            after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The error code and message an error-like fault answers with.
    pub(crate) fn error_code(&self) -> Option<(&str, &str)> {
        match self {
            Self::Throttle => Some((
                "RequestLimitExceeded",
                "injected: request rate limit exceeded",
            )),
            Self::ActionLimited => Some((
                "LimitExceeded.ActionLimited",
                "injected: the action's rate limit is exceeded",
            )),
            Self::Error { code, message } => Some((code, message)),
            _ => None,
        }
    }
}

/// One injection rule, as [`crate::FakeCloud::faults`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultRule {
    /// `None`: both API surfaces (3.0 and legacy).
    pub surface: Option<Surface>,
    /// Action name (`UnassignPrivateIpAddresses`), `*` for any; for the metadata
    /// surface a path prefix under `meta-data/` (`cam/security-credentials/`).
    pub action: String,
    pub fault: Fault,
    /// Calls it still applies to.
    pub remaining: u32,
}

impl FaultRule {
    fn matches(&self, surface: Surface, action: &str) -> bool {
        let surface_ok = match self.surface {
            None => matches!(surface, Surface::V3 | Surface::Legacy),
            Some(s) => s == surface,
        };
        let action_ok = self.action == "*"
            || match surface {
                Surface::Metadata => action.starts_with(self.action.as_str()),
                _ => self.action == action,
            };
        surface_ok && action_ok && self.remaining > 0
    }
}

/// The pending rules.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub rules: Vec<FaultRule>,
}

impl Faults {
    pub fn add(&mut self, surface: Option<Surface>, action: &str, fault: Fault, times: u32) {
        if times > 0 {
            self.rules.push(FaultRule {
                surface,
                action: action.to_string(),
                fault,
                remaining: times,
            });
        }
    }

    /// Consumes one use of the first matching answer fault (anything but `TaskFails`).
    pub fn take_answer(&mut self, surface: Surface, action: &str) -> Option<Fault> {
        self.take(surface, action, |f| *f != Fault::TaskFails)
    }

    /// Consumes one use of a matching `TaskFails`.
    pub fn take_task_failure(&mut self, surface: Surface, action: &str) -> bool {
        self.take(surface, action, |f| *f == Fault::TaskFails)
            .is_some()
    }

    fn take(
        &mut self,
        surface: Surface,
        action: &str,
        kind: impl Fn(&Fault) -> bool,
    ) -> Option<Fault> {
        let pos = self
            .rules
            .iter()
            .position(|rule| kind(&rule.fault) && rule.matches(surface, action))?;
        let rule = &mut self.rules[pos];
        rule.remaining -= 1;
        let fault = rule.fault.clone();
        if rule.remaining == 0 {
            self.rules.remove(pos);
        }
        Some(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_count_down_and_match_by_surface_and_action() {
        let mut faults = Faults::default();
        faults.add(None, "UnassignPrivateIpAddresses", Fault::Throttle, 2);
        faults.add(
            Some(Surface::Metadata),
            "cam/",
            Fault::Http { status: 500 },
            1,
        );
        faults.add(None, "*", Fault::TaskFails, 1);

        assert_eq!(
            faults.take_answer(Surface::V3, "DescribeNetworkInterfaces"),
            None
        );
        assert_eq!(
            faults.take_answer(Surface::Legacy, "UnassignPrivateIpAddresses"),
            Some(Fault::Throttle)
        );
        assert_eq!(
            faults.take_answer(Surface::V3, "UnassignPrivateIpAddresses"),
            Some(Fault::Throttle)
        );
        assert_eq!(
            faults.take_answer(Surface::V3, "UnassignPrivateIpAddresses"),
            None
        );

        assert_eq!(faults.take_answer(Surface::Metadata, "instance-id"), None);
        assert_eq!(
            faults.take_answer(Surface::Metadata, "cam/security-credentials/"),
            Some(Fault::Http { status: 500 })
        );
        assert!(faults.take_task_failure(Surface::V3, "AssignPrivateIpAddresses"));
        assert!(!faults.take_task_failure(Surface::V3, "AssignPrivateIpAddresses"));
        assert!(faults.rules.is_empty());
    }
}
