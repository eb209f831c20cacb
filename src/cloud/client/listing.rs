//! The listing: this instance's ENIs from `DescribeNetworkInterfaces` (API 3.0 always),
//! page by page, and the short cache of the last answer.

use super::*;

/// The most `DescribeNetworkInterfaces` pages one listing follows (of
/// [`super::super::v3::PAGE_SIZE`] ENIs each). One instance holds a few dozen ENIs at most, so
/// a listing needs one page; ten leave room without letting an endless `TotalCount`
/// page forever.
pub const MAX_DESCRIBE_PAGES: usize = 10;

/// The last `list_enis` answer. `generation` changes on every invalidation, so a listing
/// that started before an unassign cannot store its (older) answer after it.
#[derive(Debug, Default)]
pub(super) struct DescribeCache {
    generation: u64,
    entry: Option<(Instant, Vec<Eni>)>,
}

impl TencentCloud {
    pub(super) async fn list_all_enis(&self) -> Result<Vec<Eni>, CloudError> {
        let (generation, cached) = self.cached_enis();
        if let Some(enis) = cached {
            return Ok(enis);
        }
        let mut enis = Vec::new();
        for page_number in 1.. {
            if page_number > MAX_DESCRIBE_PAGES {
                // The listing is filtered to this instance, whose ENIs fit in one page; a
                // server that keeps promising more is broken or hostile.
                return Err(CloudError::local(
                    DESCRIBE_ENIS,
                    "Response.TooManyPages",
                    format!(
                        "TotalCount still above the {} ENIs read after {MAX_DESCRIBE_PAGES} pages",
                        enis.len()
                    ),
                ));
            }
            let offset = u64::try_from(enis.len()).unwrap_or(u64::MAX);
            let (page, total) = self
                .call(
                    DESCRIBE_ENIS,
                    &self.limits.describe,
                    |keys, now| async move {
                        self.v3
                            .describe_enis(&keys, now, &self.instance_id, offset)
                            .await
                    },
                )
                .await?;
            let empty = page.is_empty();
            enis.extend(page);
            // An empty page ends the listing even if TotalCount promised more.
            if empty || u64::try_from(enis.len()).unwrap_or(u64::MAX) >= total {
                break;
            }
        }
        self.store_enis(generation, &enis);
        Ok(enis)
    }

    fn cached_enis(&self) -> (u64, Option<Vec<Eni>>) {
        let cache = self
            .describe_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let fresh = cache
            .entry
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.describe_cache_ttl)
            .map(|(_, enis)| enis.clone());
        (cache.generation, fresh)
    }

    fn store_enis(&self, generation: u64, enis: &[Eni]) {
        let mut cache = self
            .describe_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.generation == generation {
            cache.entry = Some((Instant::now(), enis.to_vec()));
        }
    }

    pub(super) fn invalidate_enis(&self) {
        let mut cache = self
            .describe_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        cache.generation += 1;
        cache.entry = None;
    }
}
