-- q06: API aggregate. RPC area_por_categoria for 2024: total area and count
-- per category. The float sum is rounded to the square metre because another
-- summation order (partitions, parallel workers, a materialized view) changes
-- its last bits, which must not change the fingerprint.
SELECT a.categoria, round(a.total_area_m2::numeric) AS total_area_m2, a.n
FROM public.area_por_categoria(2024) AS a
ORDER BY a.categoria
