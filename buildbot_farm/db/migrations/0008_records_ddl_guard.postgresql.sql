-- No DDL of the records' tables (issue 14), where PostgreSQL lets the farm say so. The
-- tables' owner may ALTER them (DISABLE TRIGGER, RENAME, ...), DROP them, or replace the
-- function their triggers run; only an event trigger refuses that, and creating one needs a
-- superuser. So this creates the guard when the role running it is a superuser, and
-- otherwise only says so: a superuser may run this file later, as it is, with search_path
-- set to the farm's schema (docs/records.md); running it again changes nothing.
--
-- The guard, in its own schema farm_records_guard (owned by the superuser who created it,
-- so that dropping a farm schema with CASCADE cannot take the guard with it): one function,
-- fired by two event triggers (event triggers belong to a database), refusing DDL of the
-- records objects of every farm schema listed in farm_records_guard.schemas (several farms
-- may share a database, one schema each). It refuses every role, superusers included, who
-- may ALTER EVENT TRIGGER farm_records_no_ddl DISABLE (and farm_records_no_drop) first, as
-- a later migration that changes these tables must. GRANT and REVOKE stay possible.
DO $migration$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE NOTICE 'build records: % is not a superuser, so no event trigger refuses '
            'ALTER or DROP of the records tables; see docs/records.md', current_user;
        RETURN;
    END IF;
    CREATE SCHEMA IF NOT EXISTS farm_records_guard;
    CREATE TABLE IF NOT EXISTS farm_records_guard.schemas (nsp OID PRIMARY KEY);
    IF to_regprocedure('farm_records_guard.refuse_ddl()') IS NULL THEN
        -- SECURITY DEFINER: it reads farm_records_guard, which only its owner may.
        CREATE FUNCTION farm_records_guard.refuse_ddl() RETURNS event_trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
        DECLARE
            target RECORD;
        BEGIN
            FOR target IN
                SELECT object_identity AS identity, classid, objid
                    FROM pg_event_trigger_dropped_objects() WHERE TG_EVENT = 'sql_drop'
                UNION ALL
                SELECT object_identity, classid, objid
                    FROM pg_event_trigger_ddl_commands() WHERE TG_EVENT = 'ddl_command_end'
            LOOP
                -- By name, and by what it is (a RENAME has changed the name already): a
                -- guarded schema, its records objects, a table of its records triggers, the
                -- function those run; and the guard itself. Nothing here may fail (but for
                -- a renamed guard schema, which is refused that way), or no DDL at all would
                -- pass in this database.
                IF EXISTS (
                    SELECT 1 FROM farm_records_guard.schemas g
                    LEFT JOIN pg_namespace n ON n.oid = g.nsp
                    WHERE (target.classid = 'pg_namespace'::regclass AND target.objid = g.nsp)
                    OR target.identity LIKE quote_ident(n.nspname) || '.farm\_record%'
                    OR target.identity LIKE '% on ' || quote_ident(n.nspname) || '.farm\_record%'
                    OR target.identity LIKE quote_ident(n.nspname) || '.farm\_refuse\_change(%'
                    OR EXISTS (
                        SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                        WHERE c.relnamespace = g.nsp AND t.tgname LIKE 'farm\_record%'
                        AND ((target.classid = 'pg_class'::regclass AND t.tgrelid = target.objid)
                             OR (target.classid = 'pg_proc'::regclass
                                 AND t.tgfoid = target.objid))))
                OR (target.classid = 'pg_proc'::regclass AND EXISTS (
                    SELECT 1 FROM pg_event_trigger WHERE evtfoid = target.objid))
                OR target.identity LIKE 'farm\_records\_guard.%'
                OR (target.classid = 'pg_namespace'::regclass
                    AND target.objid = to_regnamespace('farm_records_guard')) THEN
                    RAISE EXCEPTION 'build records are immutable: % of % refused', TG_TAG,
                        target.identity USING ERRCODE = 'integrity_constraint_violation',
                        HINT = 'a superuser may ALTER EVENT TRIGGER farm_records_no_ddl '
                               'DISABLE (and farm_records_no_drop) for a planned change';
                END IF;
            END LOOP;
        END;
        $body$;
    END IF;
    INSERT INTO farm_records_guard.schemas (nsp)
        VALUES (to_regnamespace(quote_ident(current_schema()))::oid) ON CONFLICT DO NOTHING;
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'farm_records_no_ddl') THEN
        CREATE EVENT TRIGGER farm_records_no_ddl ON ddl_command_end
            EXECUTE FUNCTION farm_records_guard.refuse_ddl();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'farm_records_no_drop') THEN
        CREATE EVENT TRIGGER farm_records_no_drop ON sql_drop
            EXECUTE FUNCTION farm_records_guard.refuse_ddl();
    END IF;
END;
$migration$;
