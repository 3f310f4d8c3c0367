//! Test and benchmark support for the Mosaic workspace, kept out of every crate's public
//! API: [`catalogue`], a deterministic built-in catalogue of items in style clusters and
//! users who drift to a new style, and a serving-scale fixture for latency work; and
//! [`taste_graph_fuzz`], the fuzzing entry points of taste-graph's files; [`redis`], a
//! real Redis Cluster on loopback ports (killable nodes). The examples,
//! benches, tests and fuzz targets depend on it as a dev-dependency.

#![warn(missing_docs)]

pub mod catalogue;
pub mod redis;
pub mod taste_graph_fuzz;

pub use catalogue::{Catalogue, CatalogueSpec, Event, Rng, serving_fixture};
