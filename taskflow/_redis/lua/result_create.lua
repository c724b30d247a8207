-- Write task records that do not exist yet (create_records). ARGV: what create_records
-- takes. Returns a list of 1 (written) / 0 (existed), one per record.
return create_records(1)
