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
    /// Every state a returned operation may leave: by default the one [`Model::step`]
    /// allows. Override it for outputs that leave several possible (an answer saying the
    /// outcome is unknown, when the operation took effect before it returned or not at all).
    fn step_all(&self, input: &Self::Input, output: &Self::Output) -> Vec<Self> {
        self.step(input, output).into_iter().collect()
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
                Some(out) => s.state.step_all(&op.input, out),
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
