-- q05: time window plus viewport. Features surveyed in 2023-2024 whose
-- bounding box overlaps a 0.6 x 0.6 degree box centred on São Paulo (what date
-- partitioning or a composite index should speed up).
SELECT g.id, g.nome, g.categoria, g.data_referencia
FROM public.geometrias AS g
WHERE g.data_referencia BETWEEN DATE '2023-01-01' AND DATE '2024-12-31'
  AND g.geom && ST_MakeEnvelope(-46.9333, -23.8505, -46.3333, -23.2505, 4326)
ORDER BY g.id
