//! Raw disk images and host block devices. (Filled in by the foundation work.)
