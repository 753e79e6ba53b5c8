-- q03: k nearest neighbours. The 10 features nearest to Copacabana, Rio de
-- Janeiro, in the GiST index's distance order (<->); id breaks the ties
-- between features at the same distance (such as several containing the
-- point). The distance shown is geodesic, rounded to the centimetre.
SELECT g.id,
       g.nome,
       g.categoria,
       round(ST_Distance(g.geom::geography,
                         ST_SetSRID(ST_MakePoint(-43.1822, -22.9711), 4326)::geography)::numeric,
             2) AS distancia_m
FROM public.geometrias AS g
ORDER BY g.geom <-> ST_SetSRID(ST_MakePoint(-43.1822, -22.9711), 4326), g.id
LIMIT 10
