//! Linearizability checker for recorded concurrent histories: the Wing & Gong
//! search with Lowe's memoization, as used by the Porcupine and Knossos checkers.
//!
//! Record each operation's invocation and response times (`call`, `ret`) from one
//! monotonic clock (a counter or `Instant` nanoseconds), then call [`check`], or
//! [`check_partitioned`] when the model is a set of independent objects (per key).
//! Operation `a` is ordered before `b` only if `a.ret < b.call`: equal timestamps
//! count as concurrent. An operation that never returned (crash, timeout) has
//! `output: None` (see [`Operation::pending`]): it may have taken effect at any point
//! after its call, or not at all.
// Copied into tests/support/, where not every test binary uses every item.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification. States are hashed to memoize the search, so keep
/// them small (one key's state, not the whole store: see [`check_partitioned`]).
pub trait Model: Clone + Eq + Hash {
    /// What a client asked for.
    type Input: Clone + Debug;
    /// What it got back.
    type Output: Clone + PartialEq + Debug;
    /// Applies one operation sequentially: the new state if `output` is a legal
    /// result of `input` in this state, else `None`.
    fn step(&self, input: &Self::Input, output: &Self::Output) -> Option<Self>;
    /// Possible successor states of an operation whose output is unknown (it never
    /// returned). Omitting the operation is always allowed besides these. The default,
    /// no successors, is only right for operations without side effects (reads):
    /// override it for anything that writes.
    fn step_unknown(&self, _input: &Self::Input) -> Vec<Self> {
        Vec::new()
    }
}

/// One operation of a history: `client` is informational (shown in reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Which client issued it.
    pub client: usize,
    /// Invocation time.
    pub call: u64,
    /// Response time, `>= call`; ignored (taken as infinite) when `output` is `None`.
    pub ret: u64,
    /// The request.
    pub input: I,
    /// The response, or `None` if it never came: the operation may have taken effect
    /// at any point after `call`, or not at all.
    pub output: Option<O>,
}

impl<I, O> Operation<I, O> {
    /// A completed operation.
    pub fn new(client: usize, call: u64, ret: u64, input: I, output: O) -> Self {
        let output = Some(output);
        Self {
            client,
            call,
            ret,
            input,
            output,
        }
    }

    /// An operation that never returned: `ret = u64::MAX`, `output = None`.
    pub fn pending(client: usize, call: u64, input: I) -> Self {
        let (ret, output) = (u64::MAX, None);
        Self {
            client,
            call,
            ret,
            input,
            output,
        }
    }
}

/// Result of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The history is linearizable.
    Ok,
    /// The history is not linearizable. Indices refer to the checked history (for
    /// [`check_partitioned`], the original history; both lists then belong to the
    /// first failing partition). Print it with [`Verdict::explain`].
    Violation {
        /// A longest linearizable prefix found, in linearization order: its length is
        /// how far the search got.
        linearized: Vec<usize>,
        /// Operations that could have come next after that prefix (all invoked before
        /// the earliest pending response) of which none could be placed.
        unplaced: Vec<usize>,
    },
    /// The step budget ran out before an answer was found.
    Unknown,
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Ok`].
    pub fn is_ok(&self) -> bool {
        *self == Verdict::Ok
    }

    /// Whether the verdict is a [`Verdict::Violation`].
    pub fn is_violation(&self) -> bool {
        matches!(self, Verdict::Violation { .. })
    }

    /// Human-readable report, resolving indices against `history`.
    pub fn explain<I: Debug, O: Debug>(&self, history: &[Operation<I, O>]) -> String {
        let (linearized, unplaced) = match self {
            Verdict::Ok => return "linearizable".into(),
            Verdict::Unknown => return "unknown: step budget exhausted".into(),
            Verdict::Violation {
                linearized,
                unplaced,
            } => (linearized, unplaced),
        };
        let line = |i: &usize| {
            let o = &history[*i];
            let ret = o
                .output
                .as_ref()
                .map_or("pending".into(), |_| o.ret.to_string());
            let (c, call, inp, out) = (o.client, o.call, &o.input, &o.output);
            format!("  #{i} client {c} [{call}, {ret}] {inp:?} -> {out:?}\n")
        };
        let skip = linearized.len().saturating_sub(10);
        let mut s = format!(
            "not linearizable: longest linearizable prefix has {} ops (last {} shown):\n",
            linearized.len(),
            linearized.len() - skip
        );
        s.extend(linearized[skip..].iter().map(line));
        s.push_str("after which none of these could be placed:\n");
        s.extend(unplaced.iter().map(line));
        s
    }
}

/// [`check_with_budget`] without a budget: may run for exponential time on
/// pathological histories (many long-overlapping operations).
pub fn check<M: Model>(initial: M, history: &[Operation<M::Input, M::Output>]) -> Verdict {
    check_with_budget(initial, history, u64::MAX)
}

/// [`check_partitioned_with_budget`] without a budget.
pub fn check_partitioned<M: Model, K: Eq + Hash>(
    initial: impl Fn(&K) -> M,
    history: &[Operation<M::Input, M::Output>],
    key_of: impl Fn(&M::Input) -> K,
) -> Verdict {
    check_partitioned_with_budget(initial, history, key_of, u64::MAX)
}

/// P-compositionality: splits `history` by `key_of(input)`, checks each partition
/// from `initial(key)` with its own budget of `max_steps`, in order of first
/// appearance. The first failing partition's [`Verdict::Violation`] wins; else
/// [`Verdict::Unknown`] if any partition ran out of budget; else [`Verdict::Ok`].
pub fn check_partitioned_with_budget<M: Model, K: Eq + Hash>(
    initial: impl Fn(&K) -> M,
    history: &[Operation<M::Input, M::Output>],
    key_of: impl Fn(&M::Input) -> K,
    max_steps: u64,
) -> Verdict {
    let mut index = HashMap::new();
    let mut parts: Vec<(M, Vec<usize>)> = Vec::new();
    for (i, op) in history.iter().enumerate() {
        let k = key_of(&op.input);
        let p = *index.entry(k).or_insert_with_key(|k| {
            parts.push((initial(k), Vec::new()));
            parts.len() - 1
        });
        parts[p].1.push(i);
    }
    let mut verdict = Verdict::Ok;
    for (init, ids) in parts {
        let sub: Vec<_> = ids.iter().map(|&i| history[i].clone()).collect();
        match check_with_budget(init, &sub, max_steps) {
            Verdict::Ok => {}
            Verdict::Unknown => verdict = Verdict::Unknown,
            Verdict::Violation {
                linearized,
                unplaced,
            } => {
                let map = |v: Vec<usize>| v.into_iter().map(|i| ids[i]).collect();
                let (linearized, unplaced) = (map(linearized), map(unplaced));
                return Verdict::Violation {
                    linearized,
                    unplaced,
                };
            }
        }
    }
    verdict
}

/// Checks `history` against the model starting from `initial`, giving up with
/// [`Verdict::Unknown`] after `max_steps` steps. A step is one call to
/// [`Model::step`] or [`Model::step_unknown`] (plus a hash-set insert); the search
/// never makes more than (distinct reachable (set of placed ops, state) pairs) x
/// (operations concurrent at a point) of them, and a realistic history needs about
/// one or a few per operation. Backtracking uses an explicit stack, so long
/// histories cannot overflow the call stack.
///
/// # Panics
/// If a completed operation has `call > ret`.
pub fn check_with_budget<M: Model>(
    initial: M,
    history: &[Operation<M::Input, M::Output>],
    max_steps: u64,
) -> Verdict {
    // Entry list: (time, is_return, op). Calls sort before returns at equal times,
    // so ops touching at one instant stay concurrent (`a` precedes `b` iff a.ret < b.call).
    let mut events = Vec::with_capacity(2 * history.len());
    for (i, op) in history.iter().enumerate() {
        events.push((op.call, false, i));
        if op.output.is_some() {
            assert!(op.call <= op.ret, "operation #{i}: call > ret");
            events.push((op.ret, true, i));
        }
    }
    events.sort_unstable();
    let m = events.len();
    let mut s = Search {
        next: (1..=m).chain([NIL]).collect(),
        prev: [NIL].into_iter().chain(0..m).collect(),
        node: [(NIL, false)]
            .into_iter()
            .chain(events.iter().map(|e| (e.2, !e.1)))
            .collect(),
        call_node: vec![NIL; history.len()],
        ret_node: vec![NIL; history.len()],
        bits: vec![0; history.len().div_ceil(64)],
        cache: HashSet::new(),
        stack: Vec::new(),
        state: initial,
        remaining: history.iter().filter(|o| o.output.is_some()).count(),
    };
    for (n, &(_, is_ret, op)) in events.iter().enumerate() {
        let nodes = if is_ret {
            &mut s.ret_node
        } else {
            &mut s.call_node
        };
        nodes[op] = n + 1;
    }
    let (mut steps, mut best) = (0u64, None::<(Vec<usize>, Vec<usize>)>);
    let mut cur = s.next[HEAD];
    while s.remaining > 0 {
        if cur != NIL && s.node[cur].1 {
            // A call entry before any return: try to linearize that op next.
            if steps >= max_steps {
                return Verdict::Unknown;
            }
            steps += 1;
            let op = &history[s.node[cur].0];
            let alts = match &op.output {
                Some(out) => s.state.step(&op.input, out).into_iter().collect(),
                None => s.state.step_unknown(&op.input),
            };
            cur = s.place(s.node[cur].0, cur, alts);
            continue;
        }
        // The earliest remaining return blocks: nothing fits here, backtrack.
        if best.as_ref().is_none_or(|b| s.stack.len() > b.0.len()) {
            best = Some((s.stack.iter().map(|f| f.op).collect(), s.frontier()));
        }
        let Some(f) = s.stack.pop() else {
            let (linearized, unplaced) = best.unwrap_or_default();
            return Verdict::Violation {
                linearized,
                unplaced,
            };
        };
        s.unlift(f.op);
        s.state = f.prev;
        // Retry the same op with its next untried successor state, else move on.
        cur = s.place(f.op, f.node, f.alts);
    }
    Verdict::Ok
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// A linearized op: where its call entry was, the state before it, untried successors.
struct Frame<M> {
    op: usize,
    node: usize,
    prev: M,
    alts: Vec<M>,
}

/// Search state: a doubly linked entry list (node 0 = head) with dancing-links lifts.
struct Search<M> {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// node -> (op, is_call)
    node: Vec<(usize, bool)>,
    call_node: Vec<usize>,
    /// `NIL` for pending ops: they have no return entry and never block.
    ret_node: Vec<usize>,
    /// Set of linearized ops.
    bits: Vec<u64>,
    cache: HashSet<(Vec<u64>, M)>,
    stack: Vec<Frame<M>>,
    state: M,
    /// Completed ops not yet linearized.
    remaining: usize,
}

impl<M: Model> Search<M> {
    /// Linearizes `op` (call entry `node`) with the first successor in `alts` not seen
    /// before with the same set of linearized ops. Returns the entry to scan next: the
    /// list head if placed, else the entry after `node`.
    fn place(&mut self, op: usize, node: usize, mut alts: Vec<M>) -> usize {
        self.bits[op / 64] |= 1 << (op % 64);
        while let Some(next) = alts.pop() {
            if self.cache.insert((self.bits.clone(), next.clone())) {
                let prev = std::mem::replace(&mut self.state, next);
                self.stack.push(Frame {
                    op,
                    node,
                    prev,
                    alts,
                });
                for n in [self.call_node[op], self.ret_node[op]] {
                    if n != NIL {
                        self.next[self.prev[n]] = self.next[n];
                        if self.next[n] != NIL {
                            self.prev[self.next[n]] = self.prev[n];
                        }
                    }
                }
                self.remaining -= usize::from(self.ret_node[op] != NIL);
                return self.next[HEAD];
            }
        }
        self.bits[op / 64] &= !(1 << (op % 64));
        self.next[node]
    }

    /// Undoes the list removal of the most recently placed op.
    fn unlift(&mut self, op: usize) {
        self.bits[op / 64] &= !(1 << (op % 64));
        for n in [self.ret_node[op], self.call_node[op]] {
            if n != NIL {
                self.next[self.prev[n]] = n;
                if self.next[n] != NIL {
                    self.prev[self.next[n]] = n;
                }
            }
        }
        self.remaining += usize::from(self.ret_node[op] != NIL);
    }

    /// Ops whose call precedes the earliest remaining return.
    fn frontier(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut n = self.next[HEAD];
        while n != NIL && self.node[n].1 {
            out.push(self.node[n].0);
            n = self.next[n];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert!(v
            .explain(&h)
            .contains("#1 client 1 [11, 20] (0, Read) -> Some(Val(0))"));
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
}
