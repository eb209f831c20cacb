//! The call log: one entry per request the fake answered (control endpoints excepted).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Which of the three surfaces a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Surface {
    /// `/latest/meta-data/…`.
    Metadata,
    /// API 3.0, `POST /`.
    V3,
    /// Legacy API 2.0, `/v2/index.php`.
    Legacy,
}

/// One answered request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// 1, 2, 3… in arrival order.
    pub seq: u64,
    pub surface: Surface,
    /// The action (`UnassignPrivateIpAddresses`), or for metadata the path under
    /// `meta-data/` (`network/interfaces/macs/`).
    pub action: String,
    /// API 3.0: the JSON body (or the raw text if it was not JSON); legacy: every
    /// parameter except `Signature`, as an object; metadata: `null`.
    pub params: serde_json::Value,
    /// The caller's address.
    pub source: SocketAddr,
    /// The SecretId the request was signed with, if any.
    pub secret_id: Option<String>,
    /// The ENI the call is about (`NetworkInterfaceId`, `SourceNetworkInterfaceId`…).
    pub eni: Option<String>,
    /// The IPs the call names.
    pub ips: Vec<String>,
    /// `Success`, the error code (`AuthFailure.SignatureFailure`, legacy `codeDesc`),
    /// `HTTP <status>` for an injected HTTP error, `Timeout`, `Malformed`, or for
    /// metadata `NotFound`.
    pub answer: String,
    /// The HTTP status sent.
    pub http_status: u16,
    /// API 3.0 RequestId of the answer.
    pub request_id: Option<String>,
    /// The task created (mutating calls) or queried (`DescribeVpcTaskResult`): the
    /// RequestId of the mutating call, or the legacy numeric id as a string.
    pub task: Option<String>,
    /// `RUNNING`/`SUCCESS`/`FAILED` for a successful task query.
    pub task_status: Option<String>,
    /// Fake clock, Unix milliseconds, at arrival.
    pub at_ms: i64,
}

impl Call {
    /// One human line: `v3 UnassignPrivateIpAddresses eni-1 [10.0.1.11] -> Success`.
    pub fn summary(&self) -> String {
        let surface = match self.surface {
            Surface::Metadata => "meta",
            Surface::V3 => "v3",
            Surface::Legacy => "legacy",
        };
        let action = if self.action.is_empty() {
            "(no action)"
        } else {
            self.action.as_str()
        };
        let mut line = format!("{surface} {action}");
        if let Some(eni) = &self.eni {
            line.push(' ');
            line.push_str(eni);
        }
        if !self.ips.is_empty() {
            line.push_str(&format!(" [{}]", self.ips.join(", ")));
        }
        if let Some(task) = &self.task {
            line.push_str(&format!(" task={task}"));
        }
        line.push_str(&format!(" -> {}", self.answer));
        if let Some(status) = &self.task_status {
            line.push_str(&format!(" {status}"));
        }
        line.push_str(&format!(" (from {})", self.source.ip()));
        line
    }
}
