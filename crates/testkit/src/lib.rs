//! Test and benchmark support for the Mosaic workspace, kept out of every crate's public
//! API: [`catalogue`], a deterministic built-in catalogue of items in style clusters and
//! users who drift to a new style, and a serving-scale fixture for latency work. The
//! examples, benches and tests depend on it as a dev-dependency.

#![warn(missing_docs)]

pub mod catalogue;

pub use catalogue::{Catalogue, CatalogueSpec, Event, Rng, serving_fixture};
