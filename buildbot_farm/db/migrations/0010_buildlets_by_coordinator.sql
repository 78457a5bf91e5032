-- Each coordinator's queries name it (count, count_idle, the idle claim, all): with many
-- masters sharing a database, the (type, state) index alone made them walk every master's
-- buildlets of a type (cold lease creates counted 50,000 other rows in 67 ms on SQLite).
CREATE INDEX farm_buildlets_coordinator ON farm_buildlets (coordinator, type, state);
