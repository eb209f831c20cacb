//! Following an accepted task with `DescribeVpcTaskResult` until it ends or the cap
//! passes (an IPv4 API 3.0 release first by listing: `confirm.rs`).

use super::*;

impl TencentCloud {
    pub(super) async fn follow_task(&self, task: &TaskRef) -> Result<TaskStatus, CloudError> {
        // A release we sent is confirmed by listing from the start (`confirm.rs`); one
        // still listed after the window is polled, each poll sent once (the loop
        // below is the retry).
        let mut sent = self.take_sent(task);
        let attempts = if sent.is_some() { 1 } else { self.max_attempts };
        let priority = self.task_priority(task);
        let deadline = Instant::now() + self.task_cap;
        let mut interval = self.task_poll_start;
        loop {
            if let Some(release) = sent.take() {
                if let Some(done) = self.confirm_by_listing(task, &release, deadline).await {
                    // The listing that showed it stays cached: read after the task
                    // ended, it serves the ENI's next send-time check.
                    return Ok(done);
                }
            }
            // Wait first: a task just started is still running.
            tokio::time::sleep(interval.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            let polled = self
                .call_as(
                    TASK_RESULT,
                    &self.limits.task_result,
                    priority,
                    attempts,
                    |keys, now| async move {
                        match task.protocol {
                            Protocol::V3 => self.v3.task_status(&keys, now, &task.task_id).await,
                            Protocol::Legacy => {
                                self.legacy.task_status(&keys, now, &task.task_id).await
                            }
                        }
                    },
                )
                .await;
            match polled {
                Ok(TaskStatus::Running) => {}
                Ok(done) => {
                    self.invalidate_enis();
                    tracing::info!(task_id = %task.task_id, status = ?done, "task finished");
                    return Ok(done);
                }
                // The task goes on whatever our transport does: keep following it.
                Err(error) if error.class == ErrorClass::RetryLater => {
                    tracing::warn!(task_id = %task.task_id, %error, "polling the task failed; will poll again");
                }
                Err(error) => return Err(error),
            }
            if Instant::now() >= deadline {
                tracing::warn!(task_id = %task.task_id, cap = ?self.task_cap, "task still running at the cap");
                return Ok(TaskStatus::Running);
            }
            interval = interval.saturating_mul(2).min(self.task_poll_cap);
        }
    }
}
