//! Maglev's lookup table (Eisenbud et al., NSDI 2016), as Cilium and
//! Katran fill theirs: each backend walks the table's slots in an order
//! of its own (an offset and a skip from two hashes of its address and
//! port), and the backends take turns claiming the next free slot of
//! their order until every slot is taken. Each backend gets an even share,
//! within one slot; the table depends only on the set of backends (not
//! their order, nor the node), so every node sends a flow to the same
//! backend; and removing a backend moves only the flows of its slots and
//! few others.

use std::net::SocketAddrV4;

use netlab_common::nat::MAGLEV_SLOTS;

/// FNV-1a, 64 bits, from `seed`: stable across builds and machines (the
/// standard library's hasher is neither).
fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The backend's identity as Maglev hashes it: its address and port.
fn name(backend: &SocketAddrV4) -> [u8; 6] {
    let [a, b, c, d] = backend.ip().octets();
    let [p, q] = backend.port().to_be_bytes();
    [a, b, c, d, p, q]
}

/// The table for `backends` (each with its id): the id of each slot's
/// backend; all zero (no backend) when there is none.
pub fn table(backends: &[(u16, SocketAddrV4)]) -> [u16; MAGLEV_SLOTS] {
    let mut slots = [0u16; MAGLEV_SLOTS];
    if backends.is_empty() {
        return slots;
    }
    let m = MAGLEV_SLOTS as u64;
    // By address and port, so the order they were given in does not matter.
    let mut sorted: Vec<(u16, SocketAddrV4)> = backends.to_vec();
    sorted.sort_by_key(|(_, addr)| name(addr));
    let orders: Vec<(u64, u64)> = sorted
        .iter()
        .map(|(_, addr)| {
            let name = name(addr);
            let offset = fnv(0xcbf2_9ce4_8422_2325, &name) % m;
            let skip = fnv(0x8422_2325_cbf2_9ce4, &name) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut taken = [false; MAGLEV_SLOTS];
    let mut filled = 0;
    'fill: loop {
        for (i, (id, _)) in sorted.iter().enumerate() {
            let (offset, skip) = orders[i];
            // A backend's order visits every slot (m is prime, skip < m),
            // so a free one is found within m steps.
            let mut slot = ((offset + next[i] * skip) % m) as usize;
            while taken[slot] {
                next[i] += 1;
                slot = ((offset + next[i] * skip) % m) as usize;
            }
            taken[slot] = true;
            slots[slot] = *id;
            next[i] += 1;
            filled += 1;
            if filled == MAGLEV_SLOTS {
                break 'fill;
            }
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::Ipv4Addr};

    use super::*;

    fn backends(n: u16) -> Vec<(u16, SocketAddrV4)> {
        (1..=n)
            .map(|i| {
                let [a, b] = i.to_be_bytes();
                (i, SocketAddrV4::new(Ipv4Addr::new(10, 77, a, b), 80))
            })
            .collect()
    }

    fn shares(table: &[u16; MAGLEV_SLOTS]) -> BTreeMap<u16, usize> {
        let mut shares = BTreeMap::new();
        for id in table {
            *shares.entry(*id).or_insert(0) += 1;
        }
        shares
    }

    #[test]
    fn every_backend_gets_an_even_share() {
        for n in [1, 2, 3, 7, 16, 64] {
            let table = table(&backends(n));
            let shares = shares(&table);
            assert_eq!(shares.len(), usize::from(n), "{shares:?}");
            let even = MAGLEV_SLOTS / usize::from(n);
            for share in shares.values() {
                assert!(
                    *share == even || *share == even + 1,
                    "{n} backends: {shares:?}"
                );
            }
        }
    }

    #[test]
    fn no_backend_fills_nothing() {
        assert!(table(&[]).iter().all(|id| *id == 0));
    }

    #[test]
    fn the_order_backends_come_in_does_not_matter() {
        let mut reversed = backends(5);
        reversed.reverse();
        assert_eq!(table(&backends(5)), table(&reversed));
    }

    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        let all = backends(10);
        let before = table(&all);
        let gone = all[3].0;
        let after = table(
            &all.iter()
                .copied()
                .filter(|(id, _)| *id != gone)
                .collect::<Vec<_>>(),
        );
        // The removed backend's slots must move; of the others, Maglev
        // moves few (the paper measures a few percent).
        let moved = before
            .iter()
            .zip(after.iter())
            .filter(|(b, a)| **b != gone && b != a)
            .count();
        assert!(
            moved <= MAGLEV_SLOTS / 10,
            "{moved} of the others' slots moved"
        );
        assert!(!after.contains(&gone));
    }
}
