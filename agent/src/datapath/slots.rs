//! Slots of the node's arrays of maps, and spare slots made ready ahead of
//! the pods that take them.
//!
//! Putting a pod's maps into the arrays of maps waits for an RCU grace
//! period (the kernel's guarantee that no program still sees the old inner
//! map), 8-30 ms here; a pod start should not. A spare slot holds fresh,
//! empty maps already in the arrays, pinned under `spares/`; a pod takes one
//! by renaming the pins to its own (a rename is atomic, so of two agents
//! claiming one spare, one gets it), and the agent tops the spares up in the
//! background. The claim token is the ingress trie's pin: pinned last when a
//! spare is made, renamed first when it is taken.
//!
//! A slot is in use while a pod record names it or it holds a pinned map (a
//! pod's or a spare's); any other slot is free, whatever stale maps it still
//! holds: making it a spare replaces them.
use std::{
    collections::BTreeSet,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock, mpsc},
};

use aya::maps::MapData;
use na_common::{
    names::{MAP_CONNTRACK, MAP_EGRESS, MAP_INGRESS},
    pod_state::MAX_PODS,
};

use super::{
    DatapathError,
    attach::remove_pin,
    tables::{self, InnerMaps, NodeTables},
};
use crate::{
    bpffs::{PinLayout, pin_names},
    pod_id::PodId,
};

/// The node's slots as one handle (and its clones) manages them.
#[derive(Clone, Debug)]
pub struct Slots {
    layout: PinLayout,
    flows_per_pod: u32,
    /// Slots being made spares by this handle: free by the rule above, but
    /// taken.
    reserved: Arc<Mutex<BTreeSet<u32>>>,
    /// Spares to keep ready; 0 makes each pod's slot when it starts.
    target: usize,
    /// The background worker (started on first use).
    worker: Arc<OnceLock<Mutex<mpsc::Sender<Job>>>>,
}

impl Slots {
    pub fn new(layout: PinLayout, flows_per_pod: u32, target: usize) -> Self {
        Self { layout, flows_per_pod, reserved: Arc::default(), target, worker: Arc::default() }
    }

    pub fn target(&self) -> usize {
        self.target
    }

    /// A slot holding fresh maps, now pinned as `pod`'s, and the maps: a
    /// spare if there is one, else one filled now (which waits for the grace
    /// period).
    pub fn take(&self, tables: &mut NodeTables, pod: &PodId) -> Result<(u32, PinnedMaps), DatapathError> {
        let taken = match self.claim(tables, pod)? {
            Some(taken) => taken,
            None => self.fill(tables, |_, map| self.layout.map(pod, map))?,
        };
        self.wake_refill();
        Ok(taken)
    }

    /// Takes a spare for `pod`, if any is still registered.
    fn claim(&self, tables: &NodeTables, pod: &PodId) -> Result<Option<(u32, PinnedMaps)>, DatapathError> {
        for slot in self.spares()? {
            match std::fs::rename(self.layout.spare(slot, MAP_INGRESS), self.layout.map(pod, MAP_INGRESS)) {
                Ok(()) => {}
                // Taken meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(DatapathError::Pin(self.layout.spare(slot, MAP_INGRESS), e.to_string())),
            }
            for map in [MAP_EGRESS, MAP_CONNTRACK] {
                let (from, to) = (self.layout.spare(slot, map), self.layout.map(pod, map));
                std::fs::rename(&from, to).map_err(|e| DatapathError::Pin(from, e.to_string()))?;
            }
            // Another handle may have refilled the slot since it was made
            // (its maps are then not these): such a spare is dropped.
            let maps = PinnedMaps::of_pod(&self.layout, pod)?;
            if tables.holds(slot, &maps.inner()) {
                return Ok(Some((slot, maps)));
            }
            tracing::warn!(slot, "a spare slot no longer held its maps; dropped");
        }
        Ok(None)
    }

    /// Fills the lowest free slot with fresh maps and pins them where `pin`
    /// says (a spare's pins, or a pod's), the ingress trie last.
    fn fill(
        &self,
        tables: &mut NodeTables,
        pin: impl Fn(u32, &str) -> PathBuf,
    ) -> Result<(u32, PinnedMaps), DatapathError> {
        let slot = self.reserve(tables)?;
        let filled = (|| {
            let maps = PinnedMaps {
                ingress: tables::create_trie(MAP_INGRESS)?,
                egress: tables::create_trie(MAP_EGRESS)?,
                conntrack: tables::create_conntrack(MAP_CONNTRACK, self.flows_per_pod)?,
            };
            tables.register(slot, &maps.inner())?;
            for (map, data) in
                [(MAP_EGRESS, &maps.egress), (MAP_CONNTRACK, &maps.conntrack), (MAP_INGRESS, &maps.ingress)]
            {
                let path = pin(slot, map);
                // A pod's stale pins (maps no slot holds) give way.
                remove_pin(&path)?;
                data.pin(&path).map_err(|e| DatapathError::Pin(path.clone(), e.to_string()))?;
            }
            Ok(maps)
        })();
        self.reserved.lock().unwrap_or_else(|e| e.into_inner()).remove(&slot);
        filled.map(|maps| (slot, maps))
    }

    /// The lowest free slot, now reserved.
    fn reserve(&self, tables: &NodeTables) -> Result<u32, DatapathError> {
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let named: BTreeSet<u32> = tables.records().into_iter().map(|(_, record)| record.slot).collect();
        let pinned = self.pinned_trie_ids()?;
        let slot = (0..MAX_PODS)
            .filter(|slot| !named.contains(slot) && !reserved.contains(slot))
            .find(|slot| tables.trie_at(*slot).is_none_or(|id| !pinned.contains(&id)))
            .ok_or(DatapathError::NoSlot)?;
        reserved.insert(slot);
        Ok(slot)
    }

    /// Ids of every pinned ingress trie: spares' and pods'.
    ///
    /// A pod claiming a spare moves its pin from the spares to the pods
    /// meanwhile (a rename: at any moment in exactly one of them), so the
    /// spares are read, each opened at once, before the pods are listed. A
    /// pin not found at its spare name has moved by then, and is found among
    /// the pods. Read the other way round, a claim in between is in neither:
    /// its slot looks free, is filled again, and two pods end up sharing it
    /// (seen with filters, which attach fast enough to claim while the
    /// spares are topped up).
    fn pinned_trie_ids(&self) -> Result<BTreeSet<u32>, DatapathError> {
        let id = |pin: PathBuf| Some(MapData::from_pin(pin).ok()?.info().ok()?.id());
        let spares: Vec<u32> =
            self.spares()?.into_iter().filter_map(|slot| id(self.layout.spare(slot, MAP_INGRESS))).collect();
        let pods = names_in(&self.layout.maps_dir())?
            .into_iter()
            .filter(|name| PodId::parse_pin_name(name).is_some_and(|(_, map)| map == MAP_INGRESS))
            .filter_map(|name| id(self.layout.maps_dir().join(name)));
        Ok(spares.into_iter().chain(pods).collect())
    }

    /// Spare slots, lowest first.
    pub fn spares(&self) -> Result<Vec<u32>, DatapathError> {
        let mut slots: Vec<u32> = names_in(&self.layout.spares_dir())?
            .iter()
            .filter_map(|name| PinLayout::parse_spare_pin(name).filter(|(_, map)| *map == MAP_INGRESS))
            .map(|(slot, _)| slot)
            .collect();
        slots.sort_unstable();
        Ok(slots)
    }

    /// Makes spares until there are `self.target`; returns how many it made.
    pub fn refill(&self) -> Result<usize, DatapathError> {
        let mut made = 0;
        while self.spares()?.len() < self.target {
            self.fill(&mut NodeTables::open(&self.layout)?, |slot, map| self.layout.spare(slot, map))?;
            made += 1;
        }
        Ok(made)
    }

    /// Asks the background worker to top the spares up; nothing when no
    /// spares are wanted.
    pub fn wake_refill(&self) {
        if self.target > 0 {
            self.send(Job::Refill);
        }
    }

    /// Hands `job` to the background worker, starting it on first use.
    fn send(&self, job: Job) {
        let sender = self.worker.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            // Without the sender: the thread ends when every handle sharing
            // it is gone.
            let slots = Self { worker: Arc::default(), ..self.clone() };
            std::thread::Builder::new()
                .name("na-pod-slots".into())
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        slots.run(job);
                        // What piled up meanwhile, then one refill for all.
                        let mut refill = false;
                        while let Ok(job) = rx.try_recv() {
                            match job {
                                Job::Refill => refill = true,
                                clear => slots.run(clear),
                            }
                        }
                        if refill {
                            slots.run(Job::Refill);
                        }
                    }
                })
                .expect("spawning the pod-slot thread");
            Mutex::new(tx)
        });
        let _ = sender.lock().unwrap_or_else(|e| e.into_inner()).send(job);
    }

    fn run(&self, job: Job) {
        match job {
            Job::Refill => match self.refill() {
                Ok(0) => {}
                Ok(made) => tracing::debug!(made, "spare slots made"),
                Err(e) => tracing::warn!("making spare slots: {e}"),
            },
            Job::Clear(slot, maps) => {
                if let Err(e) = NodeTables::open(&self.layout).and_then(|t| t.clear(slot, &maps.inner())) {
                    tracing::warn!(slot, "emptying a pod's slot: {e}");
                }
                self.reserved.lock().unwrap_or_else(|e| e.into_inner()).remove(&slot);
            }
        }
    }

    /// Empties `slots` of `pod`'s maps (so they are freed) and removes the
    /// pod's map pins, after its records are gone. With a background worker
    /// the slots are emptied there (each waits for a grace period),
    /// reserved till then so no one fills them meanwhile.
    pub fn release(&self, tables: Option<&NodeTables>, pod: &PodId, slots: &[u32]) -> Result<(), DatapathError> {
        for slot in slots {
            let Ok(maps) = PinnedMaps::of_pod(&self.layout, pod) else { break };
            if self.target == 0 {
                if let Some(tables) = tables {
                    // Emptied while still pinned: no one fills a slot
                    // holding pinned maps.
                    tables.clear(*slot, &maps.inner())?;
                }
            } else if self.reserved.lock().unwrap_or_else(|e| e.into_inner()).insert(*slot) {
                self.send(Job::Clear(*slot, Box::new(maps)));
            }
        }
        for map in [MAP_INGRESS, MAP_EGRESS, MAP_CONNTRACK] {
            remove_pin(&self.layout.map(pod, map))?;
        }
        Ok(())
    }
}

/// Work for the background thread.
enum Job {
    /// Top the spares up.
    Refill,
    /// Empty a slot if it still holds these maps.
    Clear(u32, Box<PinnedMaps>),
}

/// A slot's three maps, opened from their pins.
pub struct PinnedMaps {
    pub ingress: MapData,
    pub egress: MapData,
    pub conntrack: MapData,
}

impl PinnedMaps {
    pub fn of_pod(layout: &PinLayout, pod: &PodId) -> Result<Self, DatapathError> {
        let open = |map: &str| {
            let pin = layout.map(pod, map);
            MapData::from_pin(&pin).map_err(|e| DatapathError::Pin(pin, e.to_string()))
        };
        Ok(Self { ingress: open(MAP_INGRESS)?, egress: open(MAP_EGRESS)?, conntrack: open(MAP_CONNTRACK)? })
    }

    pub fn inner(&self) -> InnerMaps<'_> {
        InnerMaps { ingress: &self.ingress, egress: &self.egress, conntrack: &self.conntrack }
    }
}

/// Pin names in `dir`, as [`pin_names`] reads them.
fn names_in(dir: &Path) -> Result<Vec<String>, DatapathError> {
    pin_names(dir).map_err(|e| DatapathError::Pin(dir.to_owned(), e.to_string()))
}
