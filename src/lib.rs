//! Mosaic facade.
pub use vision_surgery;
