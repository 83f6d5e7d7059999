//! Self-tests of the linearizability checker in `support/lin.rs` (run once here rather than
//! in every test binary that includes the checker).

#[path = "support/lin.rs"]
mod lin;

use lin::*;
use proptest::prelude::*;

/// Registers keyed by a `u8`; a single-register test uses key 0.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Reg(u32);
#[derive(Clone, Copy, Debug)]
enum R {
    Read,
    Write(u32),
}
#[derive(Clone, Debug, PartialEq)]
enum RO {
    Val(u32),
    Ack,
}
impl Model for Reg {
    type Input = (u8, R);
    type Output = RO;
    fn step(&self, i: &(u8, R), o: &RO) -> Option<Self> {
        match (i.1, o) {
            (R::Read, RO::Val(v)) => (*v == self.0).then(|| self.clone()),
            (R::Write(v), RO::Ack) => Some(Reg(v)),
            _ => None,
        }
    }
    fn step_unknown(&self, i: &(u8, R)) -> Vec<Self> {
        match i.1 {
            R::Write(v) => vec![Reg(v)],
            R::Read => vec![],
        }
    }
}

/// A key that can be claimed once; later claims see who holds it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Claim(Option<u32>);
#[derive(Clone, Copy, Debug)]
struct Cl {
    key: u8,
    who: u32,
}
#[derive(Clone, Copy, Debug, PartialEq)]
enum Co {
    Acquired,
    Taken(u32),
}
impl Model for Claim {
    type Input = Cl;
    type Output = Co;
    fn step(&self, i: &Cl, o: &Co) -> Option<Self> {
        match (self.0, *o) {
            (None, Co::Acquired) => Some(Claim(Some(i.who))),
            (Some(w), Co::Taken(t)) if w == t => Some(self.clone()),
            _ => None,
        }
    }
    fn step_unknown(&self, i: &Cl) -> Vec<Self> {
        match self.0 {
            None => vec![Claim(Some(i.who))],
            Some(_) => vec![], // a claim of a taken key changes nothing
        }
    }
}

type Op = (u64, u64, (u8, R), Option<RO>);
const W: fn(u64, u64, u32) -> Op = |c, r, v| (c, r, (0, R::Write(v)), Some(RO::Ack));
const RD: fn(u64, u64, u32) -> Op = |c, r, v| (c, r, (0, R::Read), Some(RO::Val(v)));
const PW: fn(u64, u32) -> Op = |c, v| (c, u64::MAX, (0, R::Write(v)), None);

fn hist<I, O>(ops: Vec<(u64, u64, I, Option<O>)>) -> Vec<Operation<I, O>> {
    let op = |(c, (call, ret, input, output))| match output {
        Some(o) => Operation::new(c, call, ret, input, o),
        None => Operation::pending(c, call, input),
    };
    ops.into_iter().enumerate().map(op).collect()
}

fn violation(linearized: Vec<usize>, unplaced: Vec<usize>) -> Verdict {
    Verdict::Violation {
        linearized,
        unplaced,
    }
}

fn reg(ops: Vec<Op>) -> Verdict {
    check(Reg(0), &hist(ops))
}

fn claims(ops: &[(u64, u64, u8, u32, Option<Co>)]) -> Verdict {
    let ops = ops
        .iter()
        .map(|&(c, r, key, who, o)| (c, r, Cl { key, who }, o))
        .collect();
    check_partitioned(|_| Claim(None), &hist(ops), |i| i.key)
}

#[test]
fn register_histories() {
    let ok = [
        vec![
            W(0, 9, 1),
            RD(5, 15, 1),
            RD(2, 6, 0),
            W(9, 20, 2),
            RD(13, 25, 1),
            RD(26, 30, 2),
        ],
        vec![W(0, 10, 1), RD(10, 20, 0)], // touching intervals are concurrent
        vec![W(0, 100, 1), W(0, 100, 2), RD(10, 20, 2), RD(30, 40, 1)],
        vec![PW(0, 1), RD(5, 10, 0), RD(20, 30, 1), RD(40, 50, 1)],
        vec![PW(0, 1), RD(100, 110, 0)], // a pending write may never take effect
    ];
    let bad = [
        vec![W(0, 10, 1), RD(11, 20, 0)], // stale read after a completed write
        vec![RD(0, 5, 1), W(6, 10, 1)],   // read of a value written after it returned
        vec![
            W(0, 99, 1),
            W(0, 99, 2),
            RD(1, 2, 2),
            RD(3, 4, 1),
            RD(5, 6, 2),
        ], // 2, 1, 2
        vec![PW(0, 1), RD(5, 10, 1), RD(20, 30, 0)], // pending write seen, then unseen
        vec![RD(10, 20, 1), PW(21, 1)],   // pending write called after the read returned
    ];
    for h in ok {
        assert_eq!(reg(h.clone()), Verdict::Ok, "{h:?}");
    }
    for h in bad {
        assert!(reg(h.clone()).is_violation(), "{h:?}");
    }
    let h = hist(vec![W(0, 10, 1), RD(11, 20, 0)]);
    let v = check(Reg(0), &h);
    assert_eq!(v, violation(vec![0], vec![1]));
    assert!(
        v.explain(&h)
            .contains("#1 client 1 [11, 20] (0, Read) -> Some(Val(0))")
    );
}

#[test]
fn claim_histories() {
    use Co::*;
    let max = u64::MAX;
    assert!(claims(&[(0, 10, 0, 1, Some(Acquired)), (5, 15, 0, 2, Some(Taken(1)))]).is_ok());
    assert!(claims(&[(0, max, 0, 3, None), (20, 30, 0, 4, Some(Taken(3)))]).is_ok());
    let two_keys = [(0, 10, 0, 1, Some(Acquired)), (0, 10, 1, 2, Some(Acquired))];
    assert!(claims(&two_keys).is_ok());
    let bad: [&[_]; 3] = [
        &[(0, 10, 0, 1, Some(Acquired)), (5, 15, 0, 2, Some(Acquired))],
        &[(0, 1, 0, 2, Some(Taken(1))), (2, 3, 0, 1, Some(Acquired))],
        &[
            (0, max, 0, 3, None),
            (1, 2, 0, 4, Some(Acquired)),
            (3, 4, 0, 5, Some(Taken(3))),
        ],
    ];
    for h in bad {
        assert!(claims(h).is_violation(), "{h:?}");
    }
    // Indices in a partitioned violation refer to the original history.
    let h = [two_keys[0], two_keys[1], (20, 30, 1, 3, Some(Acquired))];
    assert_eq!(claims(&h), violation(vec![1], vec![2]));
}

#[test]
fn budget_gives_unknown() {
    let mut ops: Vec<_> = (1..=10).map(|v| W(0, 100, v)).collect();
    ops.push(RD(200, 210, 99));
    let h = hist(ops);
    assert_eq!(check_with_budget(Reg(0), &h, 1000), Verdict::Unknown);
    assert!(check(Reg(0), &h).is_violation());
}

#[test]
fn long_history_needs_no_recursion() {
    let pair = |v: u32| {
        let t = 4 * u64::from(v);
        [W(t, t + 1, v), RD(t + 2, t + 3, v)]
    };
    let mut ops: Vec<_> = (0..5000).flat_map(pair).collect();
    assert_eq!(reg(ops.clone()), Verdict::Ok);
    ops.push(RD(1 << 20, 1 << 21, 7));
    assert_eq!(reg(ops), violation((0..10_000).collect(), vec![10_000]));
}

#[test]
fn two_thousand_ops_eight_clients_four_keys() {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut ops = Vec::new(); // (linearization point, client, call, ret)
    for client in 0..8 {
        let mut t = 0;
        for _ in 0..250 {
            let d = 1 + rand(50);
            ops.push((t + rand(d + 1), client, t, t + d));
            t += d + rand(10);
        }
    }
    ops.sort_unstable();
    let mut regs = [0u32; 4];
    let mut to_op = |(i, &(_, client, call, ret)): (usize, _)| {
        let (key, v) = (rand(4) as usize, i as u32 + 1);
        let (input, output) = match rand(10) < 4 {
            true => ((key as u8, R::Write(v)), (regs[key] = v, RO::Ack).1),
            false => ((key as u8, R::Read), RO::Val(regs[key])),
        };
        match rand(200) {
            0 => Operation::pending(client, call, input),
            _ => Operation::new(client, call, ret, input, output),
        }
    };
    let h: Vec<_> = ops.iter().enumerate().map(&mut to_op).collect();
    let t = std::time::Instant::now();
    let v = check_partitioned(|_| Reg(0), &h, |i| i.0);
    eprintln!("2000 ops, 8 clients, 4 keys: checked in {:?}", t.elapsed());
    assert_eq!(v, Verdict::Ok, "{}", v.explain(&h));
}

/// Reference: try every order that respects real time (and every pending subset).
fn brute(s: &Reg, h: &[Operation<(u8, R), RO>], done: &mut [bool]) -> bool {
    if (0..h.len()).all(|i| done[i] || h[i].output.is_none()) {
        return true;
    }
    for i in 0..h.len() {
        let blocked = |j: usize| !done[j] && h[j].output.is_some() && h[j].ret < h[i].call;
        if done[i] || (0..h.len()).any(blocked) {
            continue;
        }
        let next: Vec<_> = match &h[i].output {
            Some(o) => s.step(&h[i].input, o).into_iter().collect(),
            None => s.step_unknown(&h[i].input),
        };
        for n in next {
            done[i] = true;
            let ok = brute(&n, h, done);
            done[i] = false;
            if ok {
                return true;
            }
        }
    }
    false
}

proptest! {
    #[test]
    fn register_agrees_with_brute_force(
        ops in prop::collection::vec((0u64..20, 0u64..10, 0u32..3, 0u32..3, 0u8..6), 1..7)
    ) {
        let h: Vec<_> = ops.iter().enumerate().map(|(c, &(call, d, w, v, kind))| {
            let input = (0, if w == 0 { R::Read } else { R::Write(w) });
            let out = if w == 0 { RO::Val(v) } else { RO::Ack };
            match kind {
                0 => Operation::pending(c, call, input),
                _ => Operation::new(c, call, call + d, input, out),
            }
        }).collect();
        let expected = brute(&Reg(0), &h, &mut vec![false; h.len()]);
        prop_assert_eq!(check(Reg(0), &h).is_ok(), expected);
    }

    #[test]
    fn claim_perturbed_sequential_runs(
        ops in prop::collection::vec((0u8..3, 0u8..10, 0u64..30, 0u64..30), 1..60),
        pick in any::<prop::sample::Index>(),
    ) {
        // Run sequentially with linearization points 10 apart, then widen each
        // interval around its point; fate 0/1: never returned, after/before effect.
        let mut owner = [None; 3];
        let mut h = Vec::new();
        for (i, &(key, fate, pre, post)) in ops.iter().enumerate() {
            let (lp, input) = (100 + 10 * i as u64, Cl { key, who: i as u32 });
            let out = owner[key as usize].map_or(Co::Acquired, Co::Taken);
            if fate != 1 && out == Co::Acquired {
                owner[key as usize] = Some(input.who);
            }
            h.push(match fate {
                0 | 1 => Operation::pending(i, lp - pre, input),
                _ => Operation::new(i, lp - pre, lp + post, input, out),
            });
        }
        let check = |h: &[Operation<Cl, Co>]| check_partitioned(|_| Claim(None), h, |i| i.key);
        prop_assert_eq!(check(&h), Verdict::Ok);
        // Nobody ever claims as u32::MAX, so seeing it as the holder is impossible.
        let done: Vec<_> = (0..h.len()).filter(|&i| h[i].output.is_some()).collect();
        if !done.is_empty() {
            let mut bad = h.clone();
            bad[done[pick.index(done.len())]].output = Some(Co::Taken(u32::MAX));
            prop_assert!(check(&bad).is_violation());
        }
        // A second "Acquired" invoked after the key's completed acquisition returned.
        let victim = (0..h.len()).find(|&j| {
            let acq = (0..j).find(|&a| {
                h[a].input.key == h[j].input.key && h[a].output == Some(Co::Acquired)
            });
            acq.is_some_and(|a| h[j].output.is_some() && h[a].ret < h[j].call)
        });
        if let Some(j) = victim {
            let mut bad = h;
            bad[j].output = Some(Co::Acquired);
            prop_assert!(check(&bad).is_violation());
        }
    }
}
