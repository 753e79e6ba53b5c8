-- q01: map viewport. Features intersecting a 0.3 x 0.3 degree box centred on
-- São Paulo (GiST index on geom, then exact ST_Intersects), with the columns
-- a map client draws.
SELECT g.id, g.nome, g.categoria, g.area_m2, g.geom
FROM public.geometrias AS g
WHERE ST_Intersects(g.geom, ST_MakeEnvelope(-46.7833, -23.7005, -46.4833, -23.4005, 4326))
ORDER BY g.id
