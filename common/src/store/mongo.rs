//! MongoDB implementation of the store (to be written).
