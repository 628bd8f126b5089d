//! Tests of the metadata module that span its files, most of them against the md-written
//! member images in `shared/fixtures/md`.

mod assembly_tests;
mod bitmap_tests;
mod create_tests;
mod examine_tests;
mod extension_tests;
mod fixtures;
mod proptests;
mod superblock_tests;
