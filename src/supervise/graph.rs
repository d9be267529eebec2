//! Dependency order, without I/O. A node "waits for" the nodes in its
//! `after` list; an edge `a -> b` reads "a waits for b".
//!
//! - Start order: a node comes after everything it waits for; among nodes
//!   free to go, the lower `priority` first, then the order of declaration.
//! - Stop order: the start order reversed, so nothing is stopped while
//!   something that waits for it still runs.
//! - Cycles are reported with their path: `cycle: a -> b -> c -> a`.
//!
//! The graph knows nodes, indices and priorities only: what a node is (an
//! instance) and what kind of wait an edge is (a `Condition`) stay with
//! the caller, which builds the [`Node`]s.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// Every cycle found through a back edge of a depth-first search over
/// `waits_for` (node i waits for each node in `waits_for[i]`), each as the
/// path of node indices from its first node back to (not repeating) it.
/// Deterministic: nodes and edges are visited in index order. Each back
/// edge gives one cycle, so every cycle is broken by removing the edges
/// reported (not every elementary cycle is listed).
pub fn find_cycles(waits_for: &[Vec<usize>]) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    fn visit(
        n: usize,
        adj: &[Vec<usize>],
        mark: &mut [Mark],
        stack: &mut Vec<usize>,
        out: &mut Vec<Vec<usize>>,
    ) {
        mark[n] = Mark::OnStack;
        stack.push(n);
        for &m in &adj[n] {
            match mark[m] {
                Mark::New => visit(m, adj, mark, stack, out),
                Mark::OnStack => {
                    let from = stack.iter().position(|&s| s == m).expect("m is on the stack");
                    out.push(stack[from..].to_vec());
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        mark[n] = Mark::Done;
    }
    let mut mark = vec![Mark::New; waits_for.len()];
    let mut out = Vec::new();
    for n in 0..waits_for.len() {
        if mark[n] == Mark::New {
            visit(n, waits_for, &mut mark, &mut Vec::new(), &mut out);
        }
    }
    out
}

/// Start order: a topological order of `waits_for` in which, among the
/// nodes whose waits are all placed, the lowest `(priority, index)` goes
/// first. `Err` holds a cycle when there is one.
fn start_order(waits_for: &[Vec<usize>], priority: &[i64]) -> Result<Vec<usize>, Vec<usize>> {
    let n = waits_for.len();
    let mut missing: Vec<usize> =
        waits_for.iter().map(|deps| deps.iter().collect::<BTreeSet<_>>().len()).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, deps) in waits_for.iter().enumerate() {
        for &d in deps.iter().collect::<BTreeSet<_>>() {
            dependents[d].push(i);
        }
    }
    let mut free: BTreeSet<(i64, usize)> =
        (0..n).filter(|&i| missing[i] == 0).map(|i| (priority[i], i)).collect();
    let mut order = Vec::with_capacity(n);
    while let Some((p, i)) = free.iter().next().copied() {
        free.remove(&(p, i));
        order.push(i);
        for &d in &dependents[i] {
            missing[d] -= 1;
            if missing[d] == 0 {
                free.insert((priority[d], d));
            }
        }
    }
    if order.len() == n {
        Ok(order)
    } else {
        Err(find_cycles(waits_for).into_iter().next().unwrap_or_default())
    }
}

/// `a -> b -> a` for a cycle given as names.
pub fn cycle_path(names: &[&str]) -> String {
    let mut s = names.join(" -> ");
    if let Some(first) = names.first() {
        s.push_str(" -> ");
        s.push_str(first);
    }
    s
}

/// Why a set of nodes cannot be ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphError {
    /// `instance` waits for a process that does not exist (found by the
    /// caller while turning what it has into [`Node`]s).
    UnknownDependency { instance: String, name: String },
    /// The names along a cycle, first not repeated.
    Cycle(Vec<String>),
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphError::UnknownDependency { instance, name } => {
                write!(f, "{instance} waits for unknown process \"{name}\"")
            }
            GraphError::Cycle(path) => {
                let names: Vec<&str> = path.iter().map(String::as_str).collect();
                write!(f, "cycle: {}", cycle_path(&names))
            }
        }
    }
}

impl std::error::Error for GraphError {}

/// One node as [`Graph::new`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node<E> {
    pub name: String,
    /// Among nodes free to go at the same moment, the lower first.
    pub priority: i64,
    /// What it waits for: the index of another node (in the list given to
    /// [`Graph::new`]) and what kind of wait it is. `E` is the caller's
    /// and only carried along.
    pub waits_for: Vec<(usize, E)>,
}

/// Nodes with their waits, indexed like the list it was built from.
#[derive(Debug, Clone)]
pub struct Graph<E> {
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// What each node waits for, and how.
    deps: Vec<Vec<(usize, E)>>,
    /// Who waits for each node.
    dependents: Vec<Vec<usize>>,
    start: Vec<usize>,
}

impl<E> Graph<E> {
    /// Order `nodes`: a cycle is an error with its path. Panics if an
    /// index in `waits_for` is not below `nodes.len()` (a caller's bug).
    pub fn new(nodes: Vec<Node<E>>) -> Result<Graph<E>, GraphError> {
        let n = nodes.len();
        let mut names = Vec::with_capacity(n);
        let mut priority = Vec::with_capacity(n);
        let mut deps = Vec::with_capacity(n);
        let mut dependents = vec![Vec::new(); n];
        for (i, node) in nodes.into_iter().enumerate() {
            for &(t, _) in &node.waits_for {
                assert!(t < n, "{} waits for node {t} of {n}", node.name);
                if !dependents[t].contains(&i) {
                    dependents[t].push(i);
                }
            }
            names.push(node.name);
            priority.push(node.priority);
            deps.push(node.waits_for);
        }
        let index: HashMap<String, usize> =
            names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        let waits: Vec<Vec<usize>> =
            deps.iter().map(|d| d.iter().map(|&(t, _)| t).collect()).collect();
        let start = start_order(&waits, &priority).map_err(|cycle| {
            GraphError::Cycle(cycle.iter().map(|&i| names[i].clone()).collect())
        })?;
        Ok(Graph { names, index, deps, dependents, start })
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Indices in start order.
    pub fn start_order(&self) -> &[usize] {
        &self.start
    }

    /// Indices in stop order (start order reversed).
    pub fn stop_order(&self) -> Vec<usize> {
        self.start.iter().rev().copied().collect()
    }

    /// What `i` waits for.
    pub fn deps(&self, i: usize) -> &[(usize, E)] {
        &self.deps[i]
    }

    /// `set` plus everything it waits for, transitively.
    pub fn with_dependencies(&self, set: &[usize]) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<usize> = set.to_vec();
        while let Some(i) = todo.pop() {
            if out.insert(i) {
                todo.extend(self.deps[i].iter().map(|&(d, _)| d));
            }
        }
        out
    }

    /// Everything that waits for `i`, directly or through others (not `i`).
    pub fn all_dependents(&self, i: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<usize> = self.dependents[i].clone();
        while let Some(d) = todo.pop() {
            if out.insert(d) {
                todo.extend(self.dependents[d].iter().copied());
            }
        }
        out
    }

    /// `set` in start order.
    pub fn sort_for_start(&self, set: &BTreeSet<usize>) -> Vec<usize> {
        self.start.iter().copied().filter(|i| set.contains(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Edge kinds for the tests.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Wait {
        Up,
        Done,
    }

    fn node(name: &str, priority: i64, waits_for: &[(usize, Wait)]) -> Node<Wait> {
        Node { name: name.into(), priority, waits_for: waits_for.to_vec() }
    }

    fn names<E>(g: &Graph<E>, order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| g.name(i).to_string()).collect()
    }

    #[test]
    fn cycles_are_found_with_their_path() {
        // 0 -> 1 -> 2 -> 0, and 3 -> 3.
        let adj = vec![vec![1], vec![2], vec![0], vec![3]];
        assert_eq!(find_cycles(&adj), vec![vec![0, 1, 2], vec![3]]);
        assert_eq!(cycle_path(&["a", "b", "c"]), "a -> b -> c -> a");
        assert!(find_cycles(&[vec![1, 2], vec![2], vec![]]).is_empty(), "a diamond is no cycle");
    }

    #[test]
    fn start_order_respects_waits_then_priority_then_declaration() {
        // 0 waits for 2; 1 has the lowest priority; 3 is free with priority 0.
        let adj = vec![vec![2], vec![], vec![], vec![]];
        let prio = vec![-10, -5, 0, 0];
        // 0 cannot go before 2 despite its priority.
        assert_eq!(start_order(&adj, &prio).unwrap(), vec![1, 2, 0, 3]);
        assert_eq!(start_order(&[vec![1], vec![0]], &[0, 0]).unwrap_err(), vec![0, 1]);
    }

    #[test]
    fn nodes_are_ordered_and_edges_keep_their_kind() {
        // web.0 and web.1 wait for both db nodes, top for web.0; early goes
        // first by priority.
        let g = Graph::new(vec![
            node("web.0", 0, &[(2, Wait::Up), (3, Wait::Done)]),
            node("web.1", 0, &[(2, Wait::Up), (3, Wait::Done)]),
            node("db.0", 5, &[]),
            node("db.1", 5, &[]),
            node("early", -1, &[]),
            node("top", 0, &[(0, Wait::Up)]),
        ])
        .unwrap();
        let start = ["early", "db.0", "db.1", "web.0", "web.1", "top"];
        assert_eq!(names(&g, g.start_order()), start);
        let stop: Vec<&str> = start.iter().rev().copied().collect();
        assert_eq!(names(&g, &g.stop_order()), stop);
        let web0 = g.index("web.0").unwrap();
        assert_eq!(g.deps(web0), [(2, Wait::Up), (3, Wait::Done)]);
        let db1 = g.index("db.1").unwrap();
        assert_eq!(
            names(&g, &g.all_dependents(db1).into_iter().collect::<Vec<_>>()),
            ["web.0", "web.1", "top"],
            "transitively"
        );
        let all = g.with_dependencies(&[web0]);
        assert_eq!(names(&g, &g.sort_for_start(&all)), ["db.0", "db.1", "web.0"]);
    }

    #[test]
    fn a_cycle_is_an_error_with_the_names_along_it() {
        let err = Graph::new(vec![
            node("a", 0, &[(1, Wait::Up)]),
            node("b", 0, &[(0, Wait::Up)]),
            node("c", 0, &[]),
        ])
        .unwrap_err();
        assert_eq!(err, GraphError::Cycle(vec!["a".into(), "b".into()]));
        assert_eq!(err.to_string(), "cycle: a -> b -> a");
    }
}
