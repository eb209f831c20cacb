//! The start-up waits: the metadata service and the first ENI listing, waited for with
//! backoff and without giving up, while the control socket answers and the watchdog is
//! fed (docs/design.md, "Start-up, and why in this order").

use super::*;

pub(super) fn metadata_client(config: &Config) -> Result<MetadataClient, DaemonError> {
    Ok(MetadataClient::new(&MetadataSettings {
        base_url: config.metadata.endpoint.clone(),
        total_timeout: config.metadata.timeout,
        ..MetadataSettings::default()
    })?)
}

/// The systemd watchdog, fed from whatever loop runs: the start-up waits, then the
/// engine. A beat every half period wakes the loop, and any turn pings when the last
/// ping is a quarter period old, so pings are at most three quarters of the period
/// apart and at most two per half period under load.
pub(super) struct Watchdog {
    pub(super) beats: Option<futures_util::stream::BoxStream<'static, ()>>,
    pub(super) ping_after: Option<Duration>,
    pub(super) last_ping: tokio::time::Instant,
}

impl Watchdog {
    pub(super) fn from_env() -> Result<Self, DaemonError> {
        let period = sd_notify::watchdog_enabled();
        let beats = match period {
            Some(w) => heartbeat::beats(w / 2).map_err(DaemonError::Watchdog)?,
            None => Box::pin(futures_util::stream::pending()),
        };
        Ok(Self {
            beats: Some(beats),
            ping_after: period.map(|w| w / 4),
            last_ping: tokio::time::Instant::now(),
        })
    }

    pub(super) fn ping_if_due(&mut self) {
        if let Some(after) = self.ping_after
            && self.last_ping.elapsed() >= after
        {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            self.last_ping = tokio::time::Instant::now();
        }
    }

    /// The next beat (never, without a watchdog).
    pub(super) async fn beat(&mut self) {
        match self.beats.as_mut() {
            Some(b) => {
                let _ = b.next().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Hands the beats over to the engine loop.
    pub(super) fn take_beats(&mut self) -> futures_util::stream::BoxStream<'static, ()> {
        self.beats
            .take()
            .unwrap_or_else(|| Box::pin(futures_util::stream::pending()))
    }
}

/// The start-up waits, with the control socket answered meanwhile: `status` says what
/// enisync waits for, `pause` and `resume` apply to the pause (which the engine then
/// takes over), and a reload's `[release]` settings are kept for the engine.
pub(super) struct Starting<'a> {
    pub(super) config: &'a Config,
    /// The operator's pause, handed to the engine when it starts.
    pub(super) pause: Pause,
    pub(super) health: &'a Health,
    pub(super) commands: &'a mut mpsc::Receiver<Command>,
    pub(super) watchdog: &'a mut Watchdog,
    pub(super) shutdown: &'a CancellationToken,
    /// The settings the engine will start with.
    pub(super) settings: Settings,
    pub(super) waiting_for: String,
}

impl Starting<'_> {
    /// The instance's facts: from the config when it names the instance (no metadata
    /// service needed), else from the metadata service, waited for.
    pub(super) async fn instance_facts(
        &mut self,
        metadata: &MetadataClient,
    ) -> Option<InstanceFacts> {
        if let Some(facts) = facts_from_config(self.config) {
            info!(instance = %facts.instance_id, region = %facts.region, "instance from the configuration (cloud.instance_id); the metadata service is not needed");
            return Some(facts);
        }
        let config = self.config;
        self.until_ok(
            Duration::from_secs(30),
            "metadata service not usable yet",
            "waiting for the metadata service",
            async || read_instance(metadata, config).await,
        )
        .await
    }

    pub(super) async fn inventory(
        &mut self,
        cloud: &TencentCloud,
        facts: &InstanceFacts,
    ) -> Option<Inventory> {
        let enis = self
            .until_ok(
                Duration::from_secs(60),
                "DescribeNetworkInterfaces failed; retrying",
                "loading the ENI inventory",
                async || cloud.list_enis().await,
            )
            .await?;
        Some(Inventory::build(
            &facts.instance_id,
            enis,
            &facts.meta,
            &self.config.interfaces,
        ))
    }

    /// Tries until `attempt` succeeds, with backoff from 200 ms doubling up to `cap`
    /// and never giving up; between tries the wait answers commands and feeds the
    /// watchdog, and `waiting_for` (with the error) is what STATUS= and `/readyz` say.
    /// `None`: stop (SIGTERM).
    pub(super) async fn until_ok<T, E: std::fmt::Display>(
        &mut self,
        cap: Duration,
        failed: &str,
        waiting_for: &str,
        mut attempt: impl AsyncFnMut() -> Result<T, E>,
    ) -> Option<T> {
        let backoff = Backoff {
            base: Duration::from_millis(200),
            cap,
        };
        let mut tries = 0;
        loop {
            match attempt().await {
                Ok(value) => return Some(value),
                Err(e) => {
                    let delay = backoff.ceiling(tries);
                    tries = tries.saturating_add(1);
                    warn!(error = %e, retry_in_ms = crate::millis(delay), "{failed}");
                    self.wait(format!("{waiting_for}: {e}"), delay).await?;
                }
            }
        }
    }

    /// Waits `delay`, answering commands and feeding the watchdog meanwhile. `None`:
    /// stop (SIGTERM).
    pub(super) async fn wait(&mut self, waiting_for: String, delay: Duration) -> Option<()> {
        if waiting_for != self.waiting_for {
            notify_status(&waiting_for);
            self.health.set_waiting(&waiting_for);
            self.waiting_for = waiting_for;
        }
        let until = tokio::time::Instant::now() + delay;
        loop {
            self.watchdog.ping_if_due();
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep_until(until) => return Some(()),
                () = self.watchdog.beat() => {}
                Some(command) = self.commands.recv() => self.answer(command),
            }
        }
    }

    pub(super) fn answer(&mut self, command: Command) {
        match command {
            Command::Snapshot(reply) => {
                let snapshot = Snapshot::starting(
                    self.waiting_for.clone(),
                    self.pause.in_force(),
                    self.settings.dry_run,
                );
                let _ = reply.send(snapshot);
            }
            Command::Pause(request, reply) => {
                let _ = reply.send(self.pause.apply(request));
            }
            Command::Reload(settings) => {
                info!(
                    waiting_for = %self.waiting_for,
                    "reload received while starting: the new [release] settings apply when the engine starts"
                );
                self.settings = *settings;
            }
            Command::Ping(reply) => {
                let _ = reply.send(());
            }
            // Dropping the reply tells the client that enisync is still starting.
            Command::Plan(_)
            | Command::ReleaseHeld(_)
            | Command::Cancel(..)
            | Command::ReleaseByHand(..)
            | Command::RefreshInventory => {}
        }
    }
}

/// With `cloud.instance_id` (which config validation pairs with `cloud.region` and at
/// least one `[[interface]]`), the instance is known without the metadata service.
pub(super) fn facts_from_config(config: &Config) -> Option<InstanceFacts> {
    let instance_id = config.cloud.instance_id.clone()?;
    let region = config.cloud.region.clone()?;
    let meta = config
        .interfaces
        .iter()
        .map(|i| {
            (
                i.mac,
                MetaFacts {
                    gateway: i.gateway,
                    subnet_prefix: None,
                },
            )
        })
        .collect();
    Some(InstanceFacts {
        instance_id,
        region,
        meta,
    })
}

/// Instance facts from the metadata service (or the config, for hosts without it).
#[derive(Debug, Clone)]
pub(super) struct InstanceFacts {
    pub(super) instance_id: String,
    pub(super) region: String,
    pub(super) meta: HashMap<MacAddr, MetaFacts>,
}

pub(super) async fn read_instance(
    metadata: &MetadataClient,
    config: &Config,
) -> Result<InstanceFacts, String> {
    let instance_id = metadata
        .instance_id()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("metadata has no instance-id")?;
    let region = match &config.cloud.region {
        Some(r) => r.clone(),
        None => metadata
            .region()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("metadata has no placement/region")?,
    };
    let mut meta = HashMap::new();
    for mac in metadata.macs().await.map_err(|e| e.to_string())? {
        let primary = metadata
            .primary_local_ipv4(&mac)
            .await
            .map_err(|e| e.to_string())?;
        let mut facts = MetaFacts::default();
        if let Some(ip) = primary {
            facts.gateway = metadata
                .gateway(&mac, ip)
                .await
                .map_err(|e| e.to_string())?;
            facts.subnet_prefix = metadata
                .subnet_mask(&mac, ip)
                .await
                .map_err(|e| e.to_string())?
                .map(|m| u8::try_from(u32::from(m).leading_ones()).unwrap_or(32));
        }
        meta.insert(mac.mac, facts);
    }
    Ok(InstanceFacts {
        instance_id,
        region,
        meta,
    })
}

pub(super) fn cloud_settings(config: &Config, facts: &InstanceFacts) -> CloudSettings {
    let c = &config.cloud;
    let mut s = CloudSettings::new(&facts.region, &facts.instance_id);
    s.protocol = c.api;
    let mut endpoints = c.v3_endpoints().into_iter().map(str::to_owned);
    s.v3_endpoint = endpoints.next().unwrap_or(s.v3_endpoint);
    s.v3_fallbacks = endpoints.collect();
    if c.api == crate::task::Protocol::Legacy {
        s.legacy_endpoint = c.release_endpoint().to_owned();
    }
    s.legacy_sign_method = c.legacy_sign_method;
    s.connect_timeout = c.connect_timeout;
    s.total_timeout = c.timeout;
    s.task_cap = c.task_timeout;
    s.extra_ca_file = c.ca_file.clone();
    s.allow_plain_http = c.allow_plain_http;
    s.rates = Rates {
        unassign: c.max_calls_per_second,
        unassign_ipv6: c.max_ipv6_calls_per_second,
        ..Rates::default()
    };
    s
}
