//! AMQP implementation of the broker (to be written).
