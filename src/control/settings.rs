//! Settings md has no field for (rebuild speed limits, checkpoint cadence, cache policy),
//! kept in our extension block on every member so the next assembly has them.

use std::rc::Rc;
use std::time::Duration;

use super::Controller;

pub const SPEED_MIN_KIB_DEFAULT: u64 = 1_000;
pub const SPEED_MAX_KIB_DEFAULT: u64 = 200_000;
/// md-like defaults: a checkpoint at least every 64 MiB or 5 s of rebuild.
pub const CHECKPOINT_BYTES_DEFAULT: u64 = 64 << 20;
pub const CHECKPOINT_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);

impl Controller {
    /// Sets the rebuild throttle (KiB/s); takes effect at the next step.
    pub fn set_speed_limits(&self, min_kib: Option<u64>, max_kib: Option<u64>) {
        if let Some(v) = min_kib {
            self.speed_min_kib.set(v.max(1));
        }
        if let Some(v) = max_kib {
            self.speed_max_kib.set(v.max(1));
        }
    }

    /// How often a rebuild checkpoints (bytes, time): tests and slow media tune it.
    pub fn set_checkpoint_every(&self, bytes: u64, interval: Duration) {
        self.checkpoint_every.set((bytes.max(1), interval));
    }

    /// Writes the current settings (speed limits, spare group) into every present member's
    /// extension block, so they survive a restart.
    pub async fn save_settings(&self) -> crate::Result<()> {
        let (min, max) = self.speed_limits();
        self.update_extension(|ext| {
            ext.speed_min_kib = Some(min);
            ext.speed_max_kib = Some(max);
        })
        .await
    }

    /// Our extension block as it stands (settings md has no field for).
    pub fn extension(&self) -> crate::metadata::Extension {
        self.extension.borrow().clone()
    }

    /// Changes the extension block with `change` and writes it to every present member.
    pub async fn update_extension(
        &self,
        change: impl FnOnce(&mut crate::metadata::Extension),
    ) -> crate::Result<()> {
        let block = {
            let mut ext = self.extension.borrow_mut();
            change(&mut ext);
            if ext.created_by.is_empty() {
                ext.created_by = format!("raidctl {}", env!("CARGO_PKG_VERSION"));
            }
            ext.encode(&self.array.meta.reference().set_uuid)
                .map_err(crate::Error::from)?
        };
        // Only where our block has its own room below the data: on md-made arrays the place
        // may belong to md's bad-block log, which we must never overwrite.
        let targets: Vec<(Rc<crate::raid::Disk>, u64)> = self
            .array
            .meta
            .disks
            .borrow()
            .iter()
            .filter(|m| m.present)
            .filter_map(|m| {
                let bitmap = m
                    .bitmap_sector
                    .as_ref()
                    .and_then(|b| crate::metadata::BitmapSuper::decode(b.as_slice()).ok());
                let at = crate::metadata::extension_offset_sectors(&m.sb, bitmap.as_ref()).ok()?;
                Some((m.disk.clone(), at * 512))
            })
            .collect();
        if targets.is_empty() {
            return Err(crate::Error::new(
                crate::ErrorKind::Unsupported,
                format!("array {} has no room for raidctl's settings block (made by mdadm?): settings stay in memory", self.array.name),
            ));
        }
        for (d, at) in targets {
            let buf = crate::buf::AlignedBuf::from_slice(&block).into_shared();
            d.member.write(at, buf, true).await.map_err(|e| {
                crate::Error::io(format!("writing settings to {}", d.member.path()), e)
            })?;
        }
        Ok(())
    }

    /// The spare group this array shares spares with, if any.
    pub fn spare_group(&self) -> Option<String> {
        self.extension.borrow().spare_group.clone()
    }

    pub fn speed_limits(&self) -> (u64, u64) {
        (self.speed_min_kib.get(), self.speed_max_kib.get())
    }
}

/// The cache keeps its policy in our extension block.
impl crate::cache::PolicyStore for Controller {
    fn load(&self) -> crate::cache::SavedPolicy {
        let ext = self.extension.borrow();
        crate::cache::SavedPolicy {
            mode: ext.cache_mode.clone(),
            battery: ext.battery.clone(),
            battery_file: ext.battery_file.clone(),
        }
    }

    fn save(
        &self,
        policy: crate::cache::SavedPolicy,
    ) -> futures::future::LocalBoxFuture<'_, crate::Result<()>> {
        Box::pin(self.update_extension(move |ext| {
            ext.cache_mode = policy.mode;
            ext.battery = policy.battery;
            ext.battery_file = policy.battery_file;
        }))
    }
}
