//! What the soak does, one step at a time, and how a seed chooses it. Pure: [`choose`] draws the
//! next action from the generator and the world, [`World::apply`] records it.

use std::net::Ipv4Addr;

use super::rng::Rng;
use super::world::{KEYS, MAX_SERVICES, NODES, Pool, Proto, Svc, World, extra_pool};

/// One step of the soak.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create this Service.
    CreateService(Svc),
    /// Replace an existing Service's spec and annotations with this.
    ChangeService(Svc),
    /// Delete the Service.
    DeleteService(String),
    /// Create or replace the `extra` pool.
    ApplyPool(Pool),
    /// Delete the `extra` pool.
    DeletePool,
    /// Stop controller replica `i`: SIGKILL when `hard`, SIGTERM otherwise.
    StopController { i: usize, hard: bool },
    /// Start controller replica `i` again.
    StartController(usize),
    /// Stop node `i`'s speaker.
    StopSpeaker { i: usize, hard: bool },
    /// Start node `i`'s speaker again.
    StartSpeaker(usize),
    /// Set node `i`'s LAN link down or up.
    Link { i: usize, up: bool },
    /// Set node `i`'s backend Pod Ready or not (its endpoint moves away or back).
    PodReady { i: usize, ready: bool },
    /// End every watch (clients resume).
    DropWatches,
    /// Forget the API's history: resuming watches get 410 and re-list.
    Compact,
    /// Restart the API's watch cache (every watch ends, history forgotten).
    RestartWatchCache,
    /// Fail the next `count` writes with `code` (500 or 429).
    FailWrites { count: u32, code: u16 },
    /// Answer every request after this many milliseconds.
    Latency(u64),
    /// Hold (or release) every request on the controllers' Lease.
    HoldLeases(bool),
}

/// The kinds of action and how often each is drawn (an inapplicable draw is drawn again).
const WEIGHTS: [u32; 17] = [10, 14, 4, 5, 2, 3, 4, 3, 4, 2, 4, 4, 2, 2, 1, 3, 3];

/// The next action for `world`, drawn from `rng`.
pub fn choose(rng: &mut Rng, world: &World) -> Action {
    loop {
        let kind = rng.weighted(&WEIGHTS);
        if let Some(a) = draw(rng, world, kind) {
            return a;
        }
    }
}

fn draw(rng: &mut Rng, w: &World, kind: usize) -> Option<Action> {
    let stopped = |run: &[bool]| run.iter().enumerate().filter(|(_, r)| !**r).map(|(i, _)| i).collect::<Vec<_>>();
    let running = |run: &[bool]| run.iter().enumerate().filter(|(_, r)| **r).map(|(i, _)| i).collect::<Vec<_>>();
    let names: Vec<&String> = w.services.keys().collect();
    Some(match kind {
        0 if w.services.len() < MAX_SERVICES => {
            let name = format!("s{}", w.next_service);
            Action::CreateService(new_service(rng, w, name))
        }
        1 if !names.is_empty() => {
            let s = &w.services[*rng.pick(&names)];
            Action::ChangeService(change(rng, s))
        }
        2 if !names.is_empty() => Action::DeleteService(rng.pick(&names).to_string()),
        3 => Action::ApplyPool(extra_pool(
            rng.between(1, 16) as u8,
            rng.chance(60).then(|| rng.between(1, 20) as i32),
            rng.chance(20),
        )),
        4 if w.pools.contains_key("extra") => Action::DeletePool,
        5 if !running(&w.controllers).is_empty() => {
            Action::StopController { i: *rng.pick(&running(&w.controllers)), hard: rng.chance(50) }
        }
        6 if !stopped(&w.controllers).is_empty() => Action::StartController(*rng.pick(&stopped(&w.controllers))),
        7 if !running(&w.speakers).is_empty() => {
            Action::StopSpeaker { i: *rng.pick(&running(&w.speakers)), hard: rng.chance(50) }
        }
        8 if !stopped(&w.speakers).is_empty() => Action::StartSpeaker(*rng.pick(&stopped(&w.speakers))),
        9 if !running(&w.links).is_empty() => Action::Link { i: *rng.pick(&running(&w.links)), up: false },
        10 if !stopped(&w.links).is_empty() => Action::Link { i: *rng.pick(&stopped(&w.links)), up: true },
        11 => {
            let i = rng.below(NODES);
            // One Pod stays Ready: Local Services need an endpoint somewhere to be announced.
            let others_ready = w.ready.iter().enumerate().any(|(j, r)| j != i && *r);
            if w.ready[i] && !others_ready {
                return None;
            }
            Action::PodReady { i, ready: !w.ready[i] }
        }
        12 => Action::DropWatches,
        13 => Action::Compact,
        14 => Action::RestartWatchCache,
        15 => {
            if rng.chance(60) {
                Action::FailWrites { count: rng.between(1, 5) as u32, code: *rng.pick(&[500, 429]) }
            } else {
                Action::Latency(*rng.pick(&[0, 0, 50, 200]))
            }
        }
        16 => Action::HoldLeases(!w.leases_held),
        _ => return None,
    })
}

fn ports(rng: &mut Rng, n: u32) -> Vec<(Proto, u16)> {
    // A few ports every Service may pick (sharers then clash) and one of its own.
    let own = 8000 + (n % 1000) as u16;
    let mut ports = vec![(Proto::Tcp, *rng.pick(&[80, 443, own]))];
    for _ in 0..rng.below(3) {
        let p = (*rng.pick(&[Proto::Tcp, Proto::Udp]), *rng.pick(&[53, 80, 443, own + 1]));
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

fn requested(rng: &mut Rng) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 130 + rng.below(10) as u8)
}

fn new_service(rng: &mut Rng, w: &World, name: String) -> Svc {
    let ports = ports(rng, w.next_service);
    // Often a would-be sharer of a keyed Service: same key, policy and wishes, its own ports —
    // which may clash with the other's, so that both sharing and refusing to share are exercised.
    let keyed: Vec<&Svc> = w.services.values().filter(|s| s.key.is_some()).collect();
    if !keyed.is_empty() && rng.chance(40) {
        let other = *rng.pick(&keyed);
        return Svc { name, ports, ..other.clone() };
    }
    let mut s = Svc {
        name,
        ports,
        local: rng.chance(25),
        dual: false,
        requested: None,
        pool: None,
        key: rng.chance(50).then(|| *rng.pick(&KEYS)),
    };
    if rng.chance(25) {
        s.requested = Some(requested(rng));
    } else {
        s.dual = rng.chance(35);
        s.pool = [None, None, None, Some("extra"), Some("base")][rng.below(5)];
    }
    s
}

fn change(rng: &mut Rng, s: &Svc) -> Svc {
    let mut s = s.clone();
    let n: u32 = s.name.trim_start_matches('s').parse().unwrap_or(0);
    match rng.below(6) {
        0 => s.ports = ports(rng, n),
        1 => s.local = !s.local,
        2 if s.requested.is_none() => s.dual = !s.dual,
        3 => {
            // Ask for an address, another one, or none any more.
            s.requested = if s.requested.is_some() && rng.chance(50) { None } else { Some(requested(rng)) };
            if s.requested.is_some() {
                (s.dual, s.pool) = (false, None);
            }
        }
        4 if s.requested.is_none() => s.pool = [None, Some("extra"), Some("base")][rng.below(3)],
        _ => s.key = if s.key.is_some() && rng.chance(40) { None } else { Some(*rng.pick(&KEYS)) },
    }
    s
}

impl World {
    /// Records `action` as done.
    pub fn apply(&mut self, action: &Action) {
        match action {
            Action::CreateService(s) => {
                self.next_service += 1;
                self.services.insert(s.name.clone(), s.clone());
            }
            Action::ChangeService(s) => {
                self.services.insert(s.name.clone(), s.clone());
            }
            Action::DeleteService(name) => {
                self.services.remove(name);
            }
            Action::ApplyPool(p) => {
                self.pools.insert(p.name, p.clone());
            }
            Action::DeletePool => {
                self.pools.remove("extra");
            }
            Action::StopController { i, .. } => self.controllers[*i] = false,
            Action::StartController(i) => self.controllers[*i] = true,
            Action::StopSpeaker { i, .. } => self.speakers[*i] = false,
            Action::StartSpeaker(i) => self.speakers[*i] = true,
            Action::Link { i, up } => self.links[*i] = *up,
            Action::PodReady { i, ready } => self.ready[*i] = *ready,
            Action::Latency(ms) => self.latency_ms = *ms,
            Action::HoldLeases(held) => self.leases_held = *held,
            Action::DropWatches | Action::Compact | Action::RestartWatchCache | Action::FailWrites { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, steps: usize) -> (Vec<Action>, World) {
        let (mut rng, mut world) = (Rng::new(seed), World::default());
        let actions = (0..steps)
            .map(|_| {
                let a = choose(&mut rng, &world);
                world.apply(&a);
                a
            })
            .collect();
        (actions, world)
    }

    #[test]
    fn a_seed_names_one_run() {
        assert_eq!(run(11, 300).0, run(11, 300).0);
        assert_ne!(run(11, 300).0, run(12, 300).0);
    }

    #[test]
    fn every_kind_of_action_is_drawn_and_the_world_stays_within_its_rules() {
        let (actions, _) = run(3, 5000);
        let kinds: std::collections::BTreeSet<_> =
            actions.iter().map(|a| format!("{a:?}").split([' ', '(', '{']).next().unwrap().to_string()).collect();
        assert_eq!(kinds.len(), 17, "{kinds:?}");
        let (mut rng, mut world) = (Rng::new(5), World::default());
        for _ in 0..5000 {
            let a = choose(&mut rng, &world);
            world.apply(&a);
            assert!(world.services.len() <= MAX_SERVICES);
            assert!(world.ready.iter().any(|r| *r), "one Pod stays Ready");
            for s in world.services.values() {
                assert_eq!(s.ports[0].0, Proto::Tcp, "the connection check needs a TCP port: {s:?}");
                if s.requested.is_some() {
                    assert!(!s.dual && s.pool.is_none(), "{s:?}");
                    assert_eq!(world.allowed_pools(s)[0].name, "fixed");
                }
            }
        }
    }
}
