-- q09: point in polygon. Features containing a point in southern central São
-- Paulo (a click on the map: GiST index, then exact ST_Intersects); zero or a
-- few rows.
SELECT g.id, g.nome, g.categoria
FROM public.geometrias AS g
WHERE ST_Intersects(g.geom, ST_SetSRID(ST_MakePoint(-46.6549, -23.5929), 4326))
ORDER BY g.id
